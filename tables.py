"""Tables of results as text, HTML and Markdown, and the sharpness table.

A table is a header, rows of cells (strings) and a note that says what the numbers are.
``text_table``, ``html_table`` and ``markdown_table`` render one; the sharpness table
(``sharpness_table``) is built from the per-checkpoint rows of sharpness.py and read
back from a finished sharpness file by ``read_sharpness_table`` (the demo's page uses
it).
"""
from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from errors import UserError

SHARPNESS_FORMAT = "loss-landscape-sharpness"


def text_table(header: Sequence[str], cells: Sequence[Sequence[str]], note: str = "") -> str:
    """Columns padded to their widest cell, a dashed rule under the header, then the note."""
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells] + ["", note])


def html_table(header: Sequence[str], cells: Sequence[Sequence[str]], note: str = "", css_class: str = "") -> str:
    """A <table> (every cell escaped) followed by the note as a paragraph."""
    row = lambda values, tag: "<tr>" + "".join(f"<{tag}>{html.escape(v)}</{tag}>" for v in values) + "</tr>"
    cls = f" class='{html.escape(css_class)}'" if css_class else ""
    return (f"<table{cls}>" + row(header, "th") + "".join(row(c, "td") for c in cells)
            + "</table>" + (f"<p>{html.escape(note)}</p>" if note else ""))


def markdown_table(header: Sequence[str], cells: Sequence[Sequence[str]], note: str = "") -> str:
    """A GitHub-flavoured Markdown table, then the note after a blank line."""
    lines = [f"| {' | '.join(line)} |" for line in [list(header), ["---"] * len(header), *cells]]
    return "\n".join(lines + (["", note] if note else []))


# ----------------------------------------------------------------------- sharpness
def sharpness_table(settings: Mapping, rows: Sequence[Mapping]) -> tuple[list[str], list[list[str]], str]:
    """(header, cells, note) of sharpness.py's table: one row per checkpoint.

    ``settings``: rho (the radii), n_dirs, ascent_steps, ascent_lr, trace_samples, eig_tol
    and seed (as stored in the sharpness file); ``rows``: train_loss, train_acc,
    lambda_max, trace, trace_stderr, random_mean, random_std (per radius) and, with ascent
    steps, worst (per radius)."""
    radii, ascent = settings["rho"], settings["ascent_steps"]
    header = ["checkpoint", "train loss", "train acc (%)", "λmax", "trace ± s.e."]
    for rho in radii:
        header.append(f"ΔL random ρ={rho:g} (mean ± std)")
        if ascent:
            header.append(f"ΔL worst ρ={rho:g}")
    cells = []
    for row in rows:
        line = [row["label"], f"{row['train_loss']:.4g}", f"{row['train_acc']:.2f}", f"{row['lambda_max']:.4g}",
                f"{row['trace']:.4g} ± {row['trace_stderr']:.2g}"]
        for r in range(len(radii)):
            line.append(f"{row['random_mean'][r]:.4g} ± {row['random_std'][r]:.2g}")
            if ascent:
                line.append(f"{row['worst'][r]:.4g}")
        cells.append(line)
    note = ("L: the mean training loss over the whole training set (model in eval mode). "
            f"λmax: Lanczos, tolerance {settings['eig_tol']:g}; trace: Hutchinson, {settings['trace_samples']} "
            "Rademacher vectors, ± its standard error (Hessian w.r.t. the parameters with > 1 dimension). "
            f"ΔL = L(θ + ρ·d) − L(θ) over {settings['n_dirs']} filter-normalized random directions "
            f"(biases and BN ignored, seed {settings['seed']}; ρ = 1 is the paper's α = 1)"
            + (f"; worst: the largest ΔL of {ascent} steps of projected gradient ascent on the "
               f"filter-normalized ball of radius ρ (step {settings['ascent_lr']:g}·ρ·‖filter‖), started at the "
               "random direction with the largest ΔL." if ascent else "."))
    return header, cells, note


def read_sharpness_table(path: str) -> tuple[list[str], list[list[str]], str, list[dict]]:
    """(header, cells, note) of the table stored in a finished sharpness file, and its rows."""
    from fileio import open_h5
    with open_h5(path, "sharpness file") as f:
        if f.attrs.get("format") != SHARPNESS_FORMAT or "checkpoint_0" not in f:
            raise UserError(f"{path} is not a finished sharpness file")
        settings = json.loads(f.attrs["settings"])
        rows = []
        for c in range(len(settings["checkpoints"])):
            g = f[f"checkpoint_{c}"]
            row = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
            row.update({k: g[k][()] for k in g})
            rows.append(row)
    return (*sharpness_table(settings, rows), rows)


def write_sharpness_rows(f: Any, rows: Sequence[Mapping]) -> None:
    """The rows into an open HDF5 file: a group ``checkpoint_<c>`` per row (label,
    model_file and model_hash as attributes, every number as a dataset)."""
    import numpy as np
    for c, row in enumerate(rows):
        g = f.create_group(f"checkpoint_{c}")
        for k in ("label", "model_file", "model_hash"):
            g.attrs[k] = row[k]
        for k, v in row.items():
            if k not in ("label", "model_file", "model_hash"):
                g[k] = np.asarray(v)
