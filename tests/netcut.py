"""A real network partition on loopback: the kernel drops every TCP packet to or from one local port.

A proxy cut off from its server is not a partition: the kernel still answers the peer's TCP keepalives (and
closes the socket with a FIN or RST when the proxy gives up), so the peer learns at once what a real partition
hides from it for hours. Here the packets themselves vanish, in both directions, as on a dead network: a tc
filter on the loopback device's ingress (a classic BPF program in direct-action mode, which needs neither
iptables nor tc's drop action), added by a keeper process that removes it again when its stdin closes, so a
killed test run leaves no filter behind. Ingress, not egress: a packet dropped on its way out is reported to
the sending socket as local congestion, and TCP then retries a keepalive probe every 500 ms for ever instead
of counting it lost; dropped on the way in, it left its sender as on a real network. Needs root
(CAP_NET_ADMIN); the tests that use it skip where the kernel or the user cannot.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator

import pytest

# TC_ACT_SHOT drops the packet; TC_ACT_UNSPEC (-1) leaves it to the next filter (another test's), then passes
_DROP, _PASS = 2, 0xFFFFFFFF

# As root: add the filter, say so, and when stdin closes (the block ended, or the test run died) remove it
_KEEPER = """
tc qdisc add dev lo clsact 2>/dev/null
tc filter add dev lo ingress pref "$1" protocol ip bpf da bytecode "$2" || exit 1
echo ready
cat >/dev/null
tc filter del dev lo ingress pref "$1"
"""


def _program(port: int, spared: int) -> str:
    """Classic BPF over an Ethernet frame (loopback's): drop IPv4 TCP from or to `port`, except the
    packets of the connection whose other end is local port `spared`; in tc's `bytecode` notation."""
    code = [
        (0x28, 0, 0, 12),  # 0 ldh [12]: the EtherType
        (0x15, 0, 12, 0x0800),  # 1 IPv4, else pass
        (0x30, 0, 0, 23),  # 2 ldb [23]: the IP protocol
        (0x15, 0, 10, 6),  # 3 TCP, else pass
        (0x28, 0, 0, 20),  # 4 ldh [20]: the fragment offset
        (0x45, 8, 0, 0x1FFF),  # 5 a later fragment (no ports in it): pass
        (0xB1, 0, 0, 14),  # 6 ldxb 4*([14]&0xf): X = the IP header's length
        (0x48, 0, 0, 14),  # 7 ldh [x+14]: the source port
        (0x15, 0, 2, port),  # 8 from `port`?
        (0x48, 0, 0, 16),  # 9 ldh [x+16]: the destination port
        (0x15, 3, 4, spared),  # 10 to `spared`: pass, else drop
        (0x15, 2, 0, spared),  # 11 from `spared`: pass
        (0x48, 0, 0, 16),  # 12 ldh [x+16]: the destination port
        (0x15, 1, 0, port),  # 13 to `port`: drop
        (0x06, 0, 0, _PASS),  # 14
        (0x06, 0, 0, _DROP),  # 15
    ]
    return f"{len(code)}," + ",".join(" ".join(map(str, op)) for op in code)


@contextlib.contextmanager
def cut_off(port: int, *, spared: int) -> Iterator[None]:
    """127.0.0.1:`port` unreachable for every connection but the one from local port `spared` (a host
    elsewhere that still reaches it) until the block ends; skip the test where packets cannot be dropped."""
    if shutil.which("tc") is None:
        pytest.skip("no tc (iproute2) to drop packets with")
    keeper = subprocess.Popen(
        ["sh", "-c", _KEEPER, "keeper", str(spared), _program(port, spared)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert keeper.stdout is not None
    if keeper.stdout.readline() != "ready\n":
        _, err = keeper.communicate()
        pytest.skip(f"cannot drop packets on loopback here (root and a kernel with cls_bpf needed): {err}")
    try:
        yield
    finally:
        keeper.communicate()
