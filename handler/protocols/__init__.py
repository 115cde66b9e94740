"""The ways of speaking to the service: one file of views per protocol, over one ``handler.service.ClipService``.

A protocol reads its own request shapes, asks the service, and writes its own answers and error
shape; what every protocol does the same (read the body and its image parts, start the deadline,
register routes with their error shape) is in ``common``. Protocols never import each other or
``handler.app``: a new one is a new file here and one line in ``handler.app.PROTOCOLS``.
"""
