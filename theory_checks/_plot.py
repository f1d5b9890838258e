"""Figures: matplotlib with the Agg backend, one PNG per figure in the output folder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._config import Config


@contextmanager
def figure(config: Config, name: str, figures: list[Path], ncols: int = 1,
           size: tuple[float, float] = (5.0, 3.6)) -> Iterator[Any]:
    """Yield the axes of a new figure (None without ``config.out``); save it as
    ``<out>/<name>.png`` on exit and append the path to ``figures``."""
    if config.out is None:
        yield None
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(size[0] * ncols, size[1]), squeeze=False)
    try:
        yield axes[0] if ncols > 1 else axes[0][0]
        fig.tight_layout()
        config.out.mkdir(parents=True, exist_ok=True)
        path = config.out / f"{name}.png"
        fig.savefig(path, dpi=110)
        figures.append(path)
    finally:
        plt.close(fig)


def progress(config: Config, iterable: Any, desc: str, total: int | None = None) -> Any:
    """``iterable`` wrapped in a tqdm bar (stderr) when ``config.progress``."""
    if not config.progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)
