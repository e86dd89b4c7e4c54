"""mitmproxy addons of contextwarden; ``contextwarden.py`` in this folder is the script for ``mitmdump -s``."""
