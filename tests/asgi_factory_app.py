"""tests/asgi_server_app.py built by a factory (``uvicorn --factory
asgi_factory_app:make_app``): uvicorn calls it on its running loop, so the
AsyncKafkaManager starts in a thread there instead of at import."""


def make_app():
    import asgi_server_app

    return asgi_server_app.app
