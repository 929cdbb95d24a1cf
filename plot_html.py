"""The interactive pages of the plotting scripts (--html): one self-contained .html
per figure set (plotly.js embedded, so it opens offline), drawn as the static figures
are (the same ranges, levels and scale, from plot_common)."""
from typing import TYPE_CHECKING, Callable, Iterable, Optional

import numpy as np

from plot_common import Plots, level_labels, log10_or_nan, write_output

if TYPE_CHECKING:
    import plotly.graph_objects as go


def write_html(fig: "go.Figure", base: str, plots: Plots) -> str:
    """Write a plotly figure as ONE self-contained .html (plotly.js embedded, so it
    opens without network)."""
    import plotly.io as pio
    path = f"{base}.html"
    write_output(path, lambda tmp: pio.write_html(fig, tmp, include_plotlyjs=True,
                                                  full_html=True, auto_open=False,
                                                  config={"responsive": True}))
    plots.files.append(path)
    return path


def html_curves(curves: list, title: str, xlabel: str, log: bool = False,
                xrange: Optional[tuple] = None, loss_range: Optional[tuple] = None) -> "go.Figure":
    """1D: ``curves`` = [(x, y, name, axis ('loss'|'acc'), dash (bool))]; accuracy on
    a second y axis. Hover shows x and the value. As the static figures: ``log`` makes
    the loss axis logarithmic, ``xrange`` (xmin, xmax) and ``loss_range`` (bottom, top)
    are the axis limits."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for x, y, name, axis, dash in curves:
        y = np.asarray(y, dtype=float)
        if log and axis == "loss":
            y = np.where(y > 0, y, np.nan)                  # not drawable on a log axis
        fig.add_trace(go.Scatter(x=np.asarray(x, float).tolist(), y=_nan_to_none(y), name=name,
                                 mode="lines+markers",
                                 line=dict(dash="dash" if dash else "solid"),
                                 hovertemplate=f"x=%{{x:.4g}}<br>{name}=%{{y:.5g}}<extra></extra>"),
                      secondary_y=(axis == "acc"))
    fig.update_layout(**page_title(title), hovermode="closest")
    fig.update_xaxes(title_text=xlabel)
    if xrange is not None:
        fig.update_xaxes(range=[float(xrange[0]), float(xrange[1])])
    fig.update_yaxes(title_text="Loss (log scale)" if log else "Loss", secondary_y=False,
                     type="log" if log else "linear")
    if loss_range is not None:
        lo, hi = (np.log10(loss_range[0]), np.log10(loss_range[1])) if log else loss_range
        fig.update_yaxes(range=[float(lo), float(hi)], secondary_y=False)
    fig.update_yaxes(title_text="Accuracy (%)", secondary_y=True, range=[0, 100])
    return fig


def html_surface(x: np.ndarray, y: np.ndarray, Z: np.ndarray, name: str, title: str,
                 xlabel: str = "x", ylabel: str = "y", *, log: bool = False,
                 color_range: Optional[tuple] = None, levels: Optional[Iterable[float]] = None,
                 clip: Optional[tuple] = None) -> "go.Figure":
    """2D: a rotatable 3D surface and a contour map side by side, drawn as the static
    figures are: ``color_range`` (vmin, vmax) is the colour range of both, ``levels``
    the contour levels, ``clip`` (low, high) the range the 3D surface is clipped to
    (None: no clipping) -- all in values. With ``log`` both show log10(value) (values
    <= 0 are gaps) with axis and colour-bar ticks labelled in values. ``Z[i, j]`` is
    the value at (x_i, y_j); plotly wants rows = y, so it gets ``Z.T``. Hover shows
    x, y and the (unclipped) value; missing points are gaps."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    Z = np.asarray(Z, dtype=float)
    shown = Z
    if clip is not None:
        shown = np.clip(Z, -np.inf if clip[0] is None else clip[0],
                        np.inf if clip[1] is None else clip[1])   # NaN stays NaN
    to = log10_or_nan if log else (lambda v: np.asarray(v, dtype=float))
    label = f"{name} (log scale)" if log else name
    hover = f"x=%{{x:.4g}}<br>y=%{{y:.4g}}<br>{name}=%{{customdata:.5g}}<extra></extra>"
    raw = _nan_to_none(Z.T)
    cmin, cmax = (None, None) if color_range is None else (float(to(color_range[0])),
                                                           float(to(color_range[1])))
    ticks = _log_ticks(cmin, cmax, Z) if log else {}
    fig = make_subplots(rows=1, cols=2, specs=[[{"type": "scene"}, {"type": "xy"}]],
                        subplot_titles=("3D surface (drag to rotate)", "contour"))
    fig.add_trace(go.Surface(x=np.asarray(x, float).tolist(), y=np.asarray(y, float).tolist(),
                             z=_nan_to_none(to(shown).T), customdata=raw,
                             colorscale="Viridis", showscale=False, cmin=cmin, cmax=cmax,
                             hovertemplate=hover), 1, 1)
    lv = None if levels is None else to(np.asarray(list(levels), dtype=float))
    contours = dict(showlabels=not log)           # plotly would label log10 values
    if lv is not None and len(lv) >= 2:
        contours.update(start=float(lv[0]), end=float(lv[-1]), size=float(lv[1] - lv[0]),
                        coloring="fill")
    fig.add_trace(go.Contour(x=np.asarray(x, float).tolist(), y=np.asarray(y, float).tolist(),
                             z=_nan_to_none(to(Z).T), customdata=raw, colorscale="Viridis",
                             zmin=cmin, zmax=cmax, autocontour=levels is None,
                             hovertemplate=hover, contours=contours,
                             colorbar=dict(title=dict(text=label), **ticks)),
                  1, 2)
    if log and lv is not None:
        texts = dict(zip(lv.tolist(), level_labels(10.0 ** lv).values()))   # in values
        fig.add_trace(contour_labels(x, y, to(Z), lv, lambda v: texts[float(v)]), 1, 2)
    zaxis = dict(title=f"{name} (log)" if log else name, **ticks)   # short: not cut at the scene's edge
    if clip is not None:
        lo = np.nanmin(to(shown)) if clip[0] is None else float(to(clip[0]))
        hi = np.nanmax(to(shown)) if clip[1] is None else float(to(clip[1]))
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            zaxis["range"] = [float(lo), float(hi)]
    fig.update_layout(**page_title(title, subplot_titles=True),
                      scene=dict(xaxis_title=xlabel, yaxis_title=ylabel, zaxis=zaxis,
                                 camera=dict(eye=dict(x=2.4, y=2.4, z=1.5), center=dict(x=0.07, y=-0.07, z=0)),
                                 domain=dict(x=[0.04, 0.46], y=[0.0, 1.0])))
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    fig.update_xaxes(title_text=xlabel, range=[float(xs.min()), float(xs.max())], row=1, col=2)
    fig.update_yaxes(title_text=ylabel, range=[float(ys.min()), float(ys.max())], row=1, col=2)
    return fig


TITLE_FONT = 14             # px; one title line takes about 1.3 of it
PAGE_HEIGHT = 560           # px below the title


def page_title(title: str, subplot_titles: bool = False) -> dict:
    """Layout settings that put the whole (multi-line) title in the top margin, above
    the plots and their own titles: 12 px padding, 1.3 font sizes per line, 40 px for
    subplot titles; the page grows by the margin."""
    top = int(12 + 1.3 * TITLE_FONT * (title.count("\n") + 1) + (40 if subplot_titles else 16))
    return dict(title=dict(text=title.replace("\n", "<br>"), x=0.02, xanchor="left", y=1.0,
                           yref="container", yanchor="top", pad=dict(t=12),
                           font=dict(size=TITLE_FONT)),
                height=PAGE_HEIGHT + top, margin=dict(t=top, b=40, l=60, r=40))


def contour_labels(x: np.ndarray, y: np.ndarray, Zt: np.ndarray, levels: np.ndarray,
                   text: Callable[[float], str]) -> "go.Scatter":
    """A text trace that labels each contour level once, at the point of its lines
    farthest from the labels already placed, with ``text(level)``: contour labels in the units the user reads (plotly's
    own labels would show log10 values on a log map). ``Zt[i, j]`` is at (x_i, y_j)."""
    import contourpy
    import plotly.graph_objects as go
    gen = contourpy.contour_generator(np.asarray(x, float), np.asarray(y, float),
                                      np.ma.masked_invalid(np.asarray(Zt, float).T),
                                      line_type="Separate")
    span = np.array([np.ptp(np.asarray(x, float)) or 1.0, np.ptp(np.asarray(y, float)) or 1.0])
    placed, texts = [], []
    for level in levels:
        points = [seg for seg in gen.lines(float(level)) if len(seg) >= 2]
        if not points:
            continue
        points = np.concatenate(points) / span
        lo = np.array([np.min(x), np.min(y)], float) / span
        inner = points[((points - lo > 0.06) & (lo + 1 - points > 0.06)).all(axis=1)]
        points = inner if len(inner) else points                  # labels clear of the edges
        if placed:              # the point of the line farthest from the labels placed so far
            gaps = np.linalg.norm(points[:, None, :] - np.array(placed)[None], axis=2).min(axis=1)
            best = points[int(np.argmax(gaps))]
        else:
            best = points[len(points) // 2]
        placed.append(best)
        texts.append(text(level))
    px, py = (np.array(placed) * span).T.tolist() if placed else ([], [])
    return go.Scatter(x=px, y=py, text=texts, mode="text", name="contour labels",
                      textfont=dict(size=10, color="black"), hoverinfo="skip", showlegend=False)


def _log_ticks(lo, hi, Z):
    """tickvals (log10 units) between lo and hi, labelled in values: 1, 2, 5 x 10^k
    over up to two decades, else powers of ten (every other one past 8 decades...)."""
    if lo is None or hi is None:
        finite = log10_or_nan(Z)
        finite = finite[np.isfinite(finite)]
        if not finite.size:
            return {}
        lo, hi = finite.min(), finite.max()
    span = hi - lo
    subs = (1, 2, 5) if span <= 2 else (1,)                # at most about 8 ticks
    every = max(1, int(np.ceil(span / 8)))
    vals = [np.log10(m) + k for k in range(int(np.floor(lo)) - 1, int(np.ceil(hi)) + 2)
            if k % every == 0 for m in subs]
    vals = [v for v in vals if lo - 1e-9 <= v <= hi + 1e-9]
    if len(vals) < 2:
        return {}
    return dict(tickmode="array", tickvals=[float(v) for v in vals],
                ticktext=[f"{10 ** v:.3g}" for v in vals])


def _nan_to_none(a):
    """NaN -> None so plotly leaves a gap (and the JSON stays valid)."""
    a = np.asarray(a, dtype=float)
    return np.where(np.isfinite(a), a, None).tolist()
