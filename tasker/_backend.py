"""Which event loop is running (asyncio or trio)."""

from __future__ import annotations

__all__ = ["current_backend"]


def current_backend() -> str:
    """Return ``"asyncio"`` or ``"trio"`` for the running loop.

    anyio no longer depends on sniffio, but trio does; without sniffio installed the loop
    can only be asyncio.
    """
    try:
        import sniffio
    except ImportError:  # pragma: no cover - trio not installed
        return "asyncio"
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return "asyncio"
