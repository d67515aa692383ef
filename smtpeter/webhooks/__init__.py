"""Webhooks: what happens to an account's mail, POSTed to the account's own URLs, signed.

* ``model.py``: the hook types and which events each gets, the body of a call per type
  (SMTPeter's fields).
* ``signing.py``: secrets and Standard Webhooks signatures.
* ``client.py``: the HTTP request, only to addresses checked after resolution (SSRF).
* ``ownership.py``: a URL is used only once its owner has shown control of it.
* ``sender.py``: the durable event feed turned into stored calls, sent with retries.
* ``registry.py``: what the REST API does with hooks, and the whole put together for the service.
"""
