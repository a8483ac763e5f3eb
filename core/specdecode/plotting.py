"""matplotlib for the CLI's figures, imported only when a plot is asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError


def pyplot(path: str | Path) -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend, or a clear error naming the missing extra."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib; install it with: pip install 'specdecode[plot]'", field="plot", value=str(path)
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
