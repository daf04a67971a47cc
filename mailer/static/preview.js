// The preview page: its view tabs, and a reload when the post or a template changes (polled every 500 ms).
(() => {
  const body = document.body;
  const tabs = Array.from(document.querySelectorAll('[data-view]'));
  const panes = Array.from(document.querySelectorAll('[data-for]'));
  function show(view) {
    if (!tabs.length) return;
    if (!tabs.some((t) => t.dataset.view === view)) view = tabs[0].dataset.view;
    body.dataset.view = view;
    for (const pane of panes) pane.hidden = !pane.dataset.for.split(' ').includes(view);
    for (const tab of tabs) tab.setAttribute('aria-selected', String(tab.dataset.view === view));
  }
  for (const tab of tabs) {
    tab.addEventListener('click', () => {
      history.replaceState(null, '', '#' + tab.dataset.view);
      show(tab.dataset.view);
    });
  }
  show(location.hash.slice(1));
  const url = body.dataset.versionUrl;
  const version = body.dataset.version;
  const live = document.getElementById('live');
  if (!url) return;
  async function poll() {
    try {
      const response = await fetch(url, {cache: 'no-store'});
      if (response.ok) {
        const now = (await response.text()).trim();
        if (now !== version) {
          if (live) live.textContent = 'reloading';
          location.reload();
          return;
        }
        if (live) { live.textContent = 'live'; live.className = ''; }
      }
    } catch (err) {
      if (live) { live.textContent = 'preview server stopped'; live.className = 'stopped'; }
    }
    setTimeout(poll, 500);
  }
  setTimeout(poll, 500);
})();
