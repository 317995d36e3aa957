"""The picture demo's eight shapes at its three sizes, as hand-drawn bitmaps (what `render` stamps and what
the scorer matches samples against).

Drawn by hand rather than from formulas: at 5-9 pixels formulas made some shapes coincide (a 4-pixel star
was a square, a circle a cross). These 24 stamps are pairwise distinct: the highest overlap (intersection
over union, best of the shifts by up to one pixel) between two of them is 0.84 (a small circle and a small
square), and every other pair is below 0.81 (tests/studies/test_picture_score.py checks both).
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

SIZES = (5, 7, 9)   # small, medium, large: stamp side in pixels
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "heart", "moon")   # demo_corpus._SHAPES order

# one block per size; each row holds the eight shapes' rows, in SHAPES order
_BITMAPS = {5: """
.###. ##### ..#.. #.#.# .###. ..#.. ##.## .###.
##### ##### ..#.. .###. #...# ..#.. ##### ##...
##### ##### .###. ##### #...# ##### ##### ##...
##### ##### .###. .###. #...# ..#.. .###. ##...
.###. ##### ##### #.#.# .###. ..#.. ..#.. .###.
""", 7: """
..###.. ####### ...#... #..#..# ..###.. ...#... .##.##. ..####.
.#####. ####### ...#... .#.#.#. .#...#. ...#... ####### .###...
####### ####### ..###.. ..###.. #.....# ...#... ####### ###....
####### ####### ..###.. ####### #.....# ####### .#####. ###....
####### ####### .#####. ..###.. #.....# ...#... ..###.. ###....
.#####. ####### .#####. .#.#.#. .#...#. ...#... ...#... .###...
..###.. ####### ####### #..#..# ..###.. ...#... ....... ..####.
""", 9: """
...###... ######### ....#.... #...#...# ...###... ...###... .##...##. ...####..
.#######. ######### ....#.... .#..#..#. .##...##. ...###... ####.#### .####....
.#######. ######### ...###... ..#.#.#.. .#.....#. ...###... ######### .###.....
######### ######### ...###... ...###... #.......# ######### ######### ####.....
######### ######### ..#####.. ######### #.......# ######### .#######. ####.....
######### ######### ..#####.. ...###... #.......# ######### ..#####.. ####.....
.#######. ######### .#######. ..#.#.#.. .#.....#. ...###... ...###... .###.....
.#######. ######### .#######. .#..#..#. .##...##. ...###... ....#.... .####....
...###... ######### ######### #...#...# ...###... ...###... ......... ...####..
"""}


def _parse() -> Dict[Tuple[int, int], np.ndarray]:
    out = {}
    for side, block in _BITMAPS.items():
        rows = [line.split() for line in block.strip().splitlines()]
        for k in range(len(SHAPES)):
            out[(k, side)] = np.array([[ch == "#" for ch in row[k]] for row in rows])
    return out


STAMPS = _parse()   # (shape index, side) -> bool [side, side]


def shape_mask(shape: int, size: int) -> np.ndarray:
    """The stamp of shape `shape` (SHAPES index) at size class `size` (0 small, 1 medium, 2 large)."""
    return STAMPS[(shape, SIZES[size])]
