"""The dashboard (/dashboard): what the other stages record, for people, in a browser.

``web.py`` holds what every page shares (sessions, CSRF, headers, templates);
``pages.py`` the customer's pages; ``charts.py`` draws SVG on the server. It
reads storage and the event counts kept by ``events/statistics.py``, and
changes things only through the calls the REST API makes.
"""
