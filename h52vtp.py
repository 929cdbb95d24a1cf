"""Convert a 2D surface file to a ParaView .vtp file (VTK XML PolyData).

    python h52vtp.py --surf_file surf.h5 --surf_name train_loss --zmax 10 --log [--interp 1000]

The file holds one point (x, y, z) per grid point, with z = the value; one quad per grid
cell; point data ``zvalue`` (= z) and cell data ``averaged zvalue`` (mean of the four
corners), as the original wrote them. Values are processed in the original's order:
--interp (resample to interp x interp points, cubic spline), then --zmax (values above
are set to zmax), then --log (z = ln(z + 0.1)). Written with numpy alone; binary
(base64) by default, --ascii for text.

Points that are not computed yet (NaN) are left out, together with every quad that
touches them, so an unfinished surface shows as a surface with holes. --interp needs a
complete surface (it refuses otherwise).

Output: ``<surface file>_<surf_name>[_zmax_<zmax>][_log][_interp_<n>].vtp`` next to the
surface file or in --out_dir (the original's name, sanitized as in plot_common).
"""
import argparse
import base64
import os
from typing import Optional

import numpy as np

import flags
from errors import UserError, run_main
from plot_common import (check_finite, ensure_folder, load_surface,
                         optional_float, output_base, write_output)

MAX_INTERP = 2000   # 4 million points: 1.7 GB peak memory, a 430 MB .vtp (1000: 0.6 GB, 107 MB)


def check_interp(interp: Optional[int]) -> None:
    """--interp: None or <= 0 (none), else a whole number from 2 to MAX_INTERP."""
    if interp is not None and not isinstance(interp, (int, np.integer)):
        raise UserError(f"--interp must be a whole number, got {interp!r}")
    if interp is not None and interp > 0:
        if interp < 2:
            raise UserError(f"--interp must be at least 2 (or <= 0 for none), got {interp}")
        if interp > MAX_INTERP:
            raise UserError(f"--interp {interp} would write {interp * interp:,} points, more "
                            f"than fits in memory here; use at most --interp {MAX_INTERP} "
                            "(1000 is plenty for ParaView)")


def h5_to_vtp(surf_file: str, surf_name: str = "train_loss", log: bool = False,
              zmax: Optional[float] = None, interp: Optional[int] = None,
              show_points: bool = False, show_polys: bool = True, ascii: bool = False,
              out_dir: Optional[str] = None) -> str:
    """Write the .vtp for one quantity of a 2D surface file; returns its path. Bad
    input raises UserError before anything is written; an existing .vtp is replaced
    only by a complete new one."""
    if not (show_points or show_polys):
        raise UserError("nothing to write: use --show_points and/or --show_polys")
    check_finite(zmax=zmax)
    check_interp(interp)
    surf = load_surface(surf_file, ndim=2)
    if min(surf.shape) < 2:
        raise UserError(f"{surf_file} has a {surf.shape[0]} x {surf.shape[1]} grid; a .vtp "
                        "surface needs at least 2 points along x and y")
    x, y, Z = surf.x, surf.y, surf.get(surf_name)
    ensure_folder(out_dir or os.path.dirname(os.path.abspath(surf_file)))
    name = surf_name
    if interp is not None and interp > 0:
        x, y, Z = resample(x, y, Z, interp)
    if zmax is not None and zmax > 0:
        Z = np.minimum(Z, zmax)                  # NaN stays NaN
        name += f"_zmax={zmax:g}"
    if log:
        shown = Z[np.isfinite(Z)]
        if shown.size and shown.min() <= -0.1:
            raise UserError(f"--log takes ln({surf_name} + 0.1), but {surf_name} goes down to "
                            f"{shown.min():g}; drop --log for this quantity")
        Z = np.log(Z + 0.1)
        name += "_log"
    if interp is not None and interp > 0:
        name += f"_interp={interp}"
    path = output_base(surf_file, name, out_dir) + ".vtp"
    points, values, quads = grid_polydata(x, y, Z)
    if not len(points):
        raise UserError(f"{surf_file}: no finite {surf_name} values to write")
    write_vtp(path, points, values, quads if show_polys else None, show_points, ascii)
    print(f"wrote {path}: {len(points)} points, {len(quads) if show_polys else 0} quads"
          f"{f', {len(points)} vertices' if show_points else ''}")
    return path


def resample(x: np.ndarray, y: np.ndarray, Z: np.ndarray, n: int) -> tuple:
    """Cubic spline through the grid, evaluated on n x n points spanning it (the
    original's interp2d, removed from SciPy)."""
    from scipy.interpolate import RectBivariateSpline
    if not 2 <= n <= MAX_INTERP:
        raise UserError(f"--interp must be between 2 and {MAX_INTERP}, got {n}")
    if not np.isfinite(Z).all():
        raise UserError(f"--interp needs a complete surface; {int((~np.isfinite(Z)).sum())} "
                        "points are missing: finish the surface first or drop --interp")
    ix, iy = np.argsort(x), np.argsort(y)
    x, y, Z = x[ix], y[iy], Z[ix][:, iy]
    spline = RectBivariateSpline(x, y, Z, kx=min(3, len(x) - 1), ky=min(3, len(y) - 1))
    xn, yn = np.linspace(x[0], x[-1], n), np.linspace(y[0], y[-1], n)
    return xn, yn, spline(xn, yn)


def grid_polydata(x: np.ndarray, y: np.ndarray, Z: np.ndarray) -> tuple:
    """Points (x_i, y_j, Z[i, j]) in the original's order (x runs fastest), point
    values, and quads (point indices, counter-clockwise) -- missing points and the
    quads touching them left out."""
    nx, ny = len(x), len(y)
    XX, YY = np.meshgrid(x, y)                         # [j, i]
    zz = Z.T.ravel()                                   # flat index k = j * nx + i
    keep = np.isfinite(zz)
    new_index = np.full(nx * ny, -1, dtype=np.int64)
    new_index[keep] = np.arange(keep.sum())
    points = np.column_stack([XX.ravel(), YY.ravel(), zz])[keep]
    corner = (np.arange(ny - 1)[:, None] * nx + np.arange(nx - 1)[None, :]).ravel()
    quads = np.column_stack([corner, corner + 1, corner + nx + 1, corner + nx])
    quads = new_index[quads]
    quads = quads[(quads >= 0).all(axis=1)]
    return points, zz[keep], quads


def write_vtp(path: str, points: np.ndarray, values: np.ndarray, quads: Optional[np.ndarray],
              show_points: bool, ascii: bool) -> None:
    """VTK XML PolyData, written atomically (temporary file, then rename)."""
    n = len(points)
    verts = np.arange(n, dtype=np.int64) if show_points else np.zeros(0, np.int64)
    quads = np.zeros((0, 4), np.int64) if quads is None else quads
    cell_values = np.concatenate([values[verts], values[quads].mean(axis=1)])
    fmt = "ascii" if ascii else "binary"

    def array(data, name, ncomp=1):
        data = np.ascontiguousarray(data)
        vtype = "Float64" if data.dtype.kind == "f" else "Int64"
        data = data.astype("<f8" if vtype == "Float64" else "<i8")
        head = (f'        <DataArray type="{vtype}" Name="{name}" NumberOfComponents="{ncomp}" '
                f'format="{fmt}"')
        if data.size:
            head += f' RangeMin="{data.min():.17g}" RangeMax="{data.max():.17g}"'
        if ascii:
            body = " ".join(f"{v:.17g}" if vtype == "Float64" else str(v) for v in data.ravel())
        else:                                          # UInt64 byte count, then the data
            raw = np.uint64(data.nbytes).tobytes() + data.tobytes()
            body = base64.b64encode(raw).decode("ascii")
        return f"{head}>\n          {body}\n        </DataArray>\n"

    def cells(tag, conn, offsets):
        return (f"      <{tag}>\n" + array(conn, "connectivity") + array(offsets, "offsets")
                + f"      </{tag}>\n")

    parts = ['<?xml version="1.0"?>\n',
             '<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" '
             'header_type="UInt64">\n  <PolyData>\n',
             f'    <Piece NumberOfPoints="{n}" NumberOfVerts="{len(verts)}" NumberOfLines="0" '
             f'NumberOfStrips="0" NumberOfPolys="{len(quads)}">\n',
             '      <PointData Scalars="zvalue">\n', array(values, "zvalue"), '      </PointData>\n',
             '      <CellData Scalars="averaged zvalue">\n', array(cell_values, "averaged zvalue"),
             '      </CellData>\n',
             '      <Points>\n', array(points, "Points", 3), '      </Points>\n']
    if len(verts):
        parts.append(cells("Verts", verts, np.arange(1, len(verts) + 1)))
    if len(quads):
        parts.append(cells("Polys", quads.ravel(), 4 * np.arange(1, len(quads) + 1)))
    parts.append("    </Piece>\n  </PolyData>\n</VTKFile>\n")

    def write(tmp):
        with open(tmp, "w") as f:
            f.write("".join(parts))
    write_output(path, write)


# ---------------------------------------------------------------- command line

parser = flags.ArgumentParser(description="Convert a surface file to a ParaView .vtp file", prog="h52vtp.py")
parser.add_argument("--surf_file", "--file", "-f", dest="surf_file", required=True,
                    help="the 2D surface file (.h5)")
parser.add_argument("--surf_name", default="train_loss",
                    help="quantity: train_loss | test_loss | train_acc | test_acc | train_err | "
                         "test_err | max_eig | min_eig | eig_ratio | ...")
parser.add_argument("--zmax", type=optional_float, default=None,
                    help="clip values above zmax to zmax (off if not given or <= 0)")
parser.add_argument("--interp", type=int, default=None,
                    help="resample to interp x interp points with a cubic spline "
                         f"(1000 recommended, at most {MAX_INTERP}; off if not given or <= 0)")
parser.add_argument("--log", action="store_true", default=False, help="z = ln(value + 0.1)")
parser.add_argument("--show_points", action="store_true", default=False,
                    help="also write every point as a vertex cell")
parser.add_argument("--show_polys", action=argparse.BooleanOptionalAction, default=True,
                    help="write the quads (default; --no-show_polys for points only)")
parser.add_argument("--ascii", action="store_true", help="write text instead of base64 binary")
parser.add_argument("--out_dir", default=None, help="folder for the .vtp (default: next to "
                                                    "the surface file)")


def main(argv: list[str] | None = None) -> None:
    args = parser.parse_args(argv)
    h5_to_vtp(args.surf_file, args.surf_name, log=args.log, zmax=args.zmax, interp=args.interp,
              show_points=args.show_points, show_polys=args.show_polys, ascii=args.ascii,
              out_dir=args.out_dir)


if __name__ == "__main__":
    run_main(main)
