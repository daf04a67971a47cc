"""The email templates: installed as the package mailer.templates so that every install has them."""
