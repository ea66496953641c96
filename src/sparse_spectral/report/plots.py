"""The figures every report draws with: a headless figure, colours, "no data" notes, and the
per-method line plots of a comparison (validation loss, singular-value spectra, ...).

matplotlib is imported only inside these functions, so importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .common import display, ordered_methods

__all__ = ["colors", "finite_points", "new_figure", "no_data", "plot_methods", "plot_spectra",
           "plot_val_loss"]

#: ``entry -> (xs, ys)``: the points one method contributes to a :func:`plot_methods` plot.
Series = Callable[[Mapping[str, Any]], tuple[list[float], list[float]]]


def new_figure(width: float = 6.4, height: float = 4.0):
    """A figure not registered with pyplot, saved through the Agg canvas.

    Building ``Figure`` directly (matplotlib's recipe for web servers) needs no display and,
    unlike ``matplotlib.use("Agg")``, leaves the caller's pyplot backend alone (notebooks).
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def colors(names: list[str]) -> dict[str, Any]:
    """One colour per name (tab10, in order), the same in every plot of a report."""
    import matplotlib

    cycle = matplotlib.colormaps["tab10"].colors
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def no_data(ax, text: str) -> None:
    """Replace the axes' content by a centred note (a plot is written even without data)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def finite_points(xs: list[float], ys: list[float], positive: bool = False):
    """``(xs, ys)`` without the points whose y is not finite (or not > 0 if ``positive``)."""
    keep = [(x, y) for x, y in zip(xs, ys, strict=True)
            if math.isfinite(y) and (y > 0 or not positive)]
    return [x for x, _ in keep], [y for _, y in keep]


def plot_methods(results: Mapping[str, Any], series: Series, *, empty: str, xlabel: str,
                 ylabel: str, title: str, log_y: bool = False, **style: Any):
    """One line per method of a comparison, in the canonical order and the report's colours.

    Args:
        results: reads ``methods``; ``series(methods[name])`` gives each method's points
            (already without non-finite ones); a method without points draws no line.
        series: see above.
        empty: the note shown instead when no method has a point.
        xlabel: the x-axis label.
        ylabel: the y-axis label.
        title: the plot's title.
        log_y: a logarithmic y axis.
        **style: passed to ``Axes.plot`` (``marker``, ``linewidth``, ...).

    Returns:
        The matplotlib figure, with a grid and a legend when anything was drawn.
    """
    fig = new_figure()
    ax = fig.add_subplot()
    names = ordered_methods(results["methods"])
    palette, drawn = colors(names), 0
    for name in names:
        xs, ys = series(results["methods"][name])
        if xs:
            ax.plot(xs, ys, color=palette[name], label=display(name), **style)
            drawn += 1
    if not drawn:
        no_data(ax, empty)
        return fig
    if log_y:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _val_loss(entry: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    curve = entry["curve"]
    return finite_points([p["step"] for p in curve], [p["val_loss"] for p in curve])


def plot_val_loss(results: Mapping[str, Any]):
    """Validation loss against optimizer step, one line per method (``methods[*].curve``)."""
    return plot_methods(results, _val_loss, empty="no validation curve recorded",
                        xlabel="step", ylabel="validation loss", title="Validation loss",
                        marker=".")


def _spectrum_layers(methods: Mapping[str, Any], names: list[str]) -> list[str]:
    layers: list[str] = []
    for name in names:
        layers += [layer for layer in methods[name].get("spectra") or {} if layer not in layers]
    return layers


def plot_spectra(results: Mapping[str, Any]):
    """Singular values (log y) by index, one subplot per recorded layer, a line per method."""
    methods = results["methods"]
    names = ordered_methods(methods)
    layers = _spectrum_layers(methods, names)
    fig = new_figure(width=max(6.4, 4.0 * len(layers)), height=4.0)
    if not layers:
        no_data(fig.add_subplot(), "no singular-value spectra recorded")
        return fig
    palette = colors(names)
    axes = fig.subplots(1, len(layers), squeeze=False)[0]
    for ax, layer in zip(axes, layers, strict=True):
        for name in names:
            values = (methods[name].get("spectra") or {}).get(layer)
            if values:
                index, sv = finite_points(list(range(1, len(values) + 1)), values,
                                          positive=True)  # log scale: drop zeros
                ax.plot(index, sv, color=palette[name], label=display(name))
        ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)  # indices are whole numbers
        ax.set(xlabel="index", ylabel="singular value", title=layer)
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3)
    axes[0].legend()
    return fig
