"""``fastalex serve``: an HTTP API with dynamic batching, and a page to look inside AlexNet.

Needs the optional extra ``fastalex[serve]`` (Starlette, uvicorn, python-multipart)::

    from fastalex.serve import create_app       # an ASGI app, for any ASGI server
    app = create_app(fastalex.alexnet("torchvision", weights="imagenet"))

The command line is ``fastalex serve`` (:mod:`fastalex.serve.command`); the API and the page
are described in docs/serve.md.
"""

__all__ = ["create_app", "ServeOptions", "require_serve", "SERVE_INSTALL"]

SERVE_INSTALL = "pip install 'fastalex[serve]'"


def require_serve():
    """Raise ImportError naming the extra if Starlette, uvicorn or python-multipart is missing."""
    missing = []
    for module, package in (("starlette", "starlette"), ("uvicorn", "uvicorn"),
                            ("multipart", "python-multipart")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ImportError(f"fastalex serve needs {', '.join(missing)}: {SERVE_INSTALL}")


def __getattr__(name):
    if name in ("create_app", "ServeOptions"):
        try:
            require_serve()
        except ImportError as exc:
            raise ImportError(str(exc)) from None
        from . import app
        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
