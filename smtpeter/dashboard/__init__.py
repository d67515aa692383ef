"""The dashboard (/dashboard): what the other stages record, for people, in a browser.

``web.py`` holds what every page shares (sessions, CSRF, headers, templates);
``pages.py`` the customer's log-in, overview and messages; ``account_pages.py``
their bounces, suppressions, domains, webhooks and credentials; ``charts.py``
draws SVG on the server. It reads storage and the counts kept by
``events/statistics.py``, and changes things only through the calls the REST
API makes.
"""
