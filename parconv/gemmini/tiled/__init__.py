"""parconv's own tiling on Gemmini (docs/gemmini.md): how it is chosen (`choose`), its per-tile
cost (`cost`) and the search for array-friendly tilings around the fewest-bytes one (`search`).
Pure, no MPI."""
