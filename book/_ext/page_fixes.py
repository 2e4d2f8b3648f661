"""Two fixes to the theme's pages, so that a browser console stays free of errors.

- sphinx-thebe registers its configuration script on every ``env-before-read-docs`` event,
  and Jupyter Book's build fires that event twice, so each page declared
  ``const THEBE_JS_URL`` twice (once with filename None, once with ""): drop repeats.
- pydata-sphinx-theme reads the colour mode from localStorage, falling back to the theme's
  ``default_mode``, which sphinx-book-theme leaves empty: a first visit logged
  "Got invalid theme mode". Default it to "auto", which is what the theme then falls back to.
"""

DEFAULT_MODE = 'document.documentElement.dataset.mode ||= "auto";'


def _fix_scripts(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for script in context.get("script_files", []):
        filename = str(getattr(script, "filename", script) or "")
        key = (filename, tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.add_js_file(None, body=DEFAULT_MODE, priority=1)
    app.connect("html-page-context", _fix_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
