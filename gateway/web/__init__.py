"""Server-rendered pages of the gateway (jinja2, French, no front-end build)."""
