"""Acceptance and property tests of the Gemmini configuration, vendor heuristics and call model.

The three tables below are copied verbatim from gemmini.md (sections 6.1, 7.2 and 7.3); they are
acceptance tests: every tile, footprint, call count, reuse flag, traffic figure and execute-model
cycle count in them must be reproduced.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from parconv.errors import ParconvError
from parconv.gemmini import (GemminiConfig, Pool, VendorConvTile, conv_auto, conv_extents,
                             cost_by_walking, footprint_rows, iter_calls, matmul_auto,
                             vendor_layer_cost, vendor_loop)
from parconv.gemmini.call_rules import exec_cycles
from parconv.gemmini.cycles import AUTO_SEARCH_PATHS, auto_search_cycles
from parconv.gemmini.vendor.heuristics import auto_search_steps
from parconv.layers import get_layer, layer_names
from parconv.spec import ConvSpec

# gemmini.md 7.2: ResNet-50 layer table (network order), tiles at batch 1 and batch 4
TABLE_7_2 = """
| 1 | 224 | 3 | 64 | 7 | 2 | 3 | 112 | 3/2/1 | 118.0 | tiled_conv_auto | conv (1,6,17,16,7,7,3) | conv (2,2,20,16,7,7,3) |
| 2 | 56 | 64 | 64 | 1 | 1 | 0 | 56 | - | 12.8 | tiled_matmul_nn_auto | mm I=3136 J=64 K=64 → (8,4,4) | mm I=12544 J=64 K=64 → (8,4,4) |
| 3 | 56 | 64 | 64 | 3 | 1 | 1 | 56 | - | 115.6 | tiled_conv_auto | conv (1,22,23,16,3,3,64) | conv (4,8,16,16,3,3,64) |
| 4 | 56 | 64 | 256 | 1 | 1 | 0 | 56 | - | 51.4 | tiled_matmul_nn_auto | mm I=3136 J=256 K=64 → (5,6,4) | mm I=12544 J=256 K=64 → (5,6,4) |
| 5 | 56 | 64 | 256 | 1 | 1 | 0 | 56 | - | 51.4 | tiled_matmul_nn_auto (projection) | mm I=3136 J=256 K=64 → (5,6,4) | mm I=12544 J=256 K=64 → (5,6,4) |
| 6 | 56 | 256 | 64 | 1 | 1 | 0 | 56 | - | 51.4 | tiled_matmul_nn_auto | mm I=3136 J=64 K=256 → (8,4,16) | mm I=12544 J=64 K=256 → (8,4,16) |
| 7 | 56 | 64 | 64 | 3 | 1 | 1 | 56 | - | 115.6 | tiled_conv_auto | conv (1,22,23,16,3,3,64) | conv (4,8,16,16,3,3,64) |
| 8 | 56 | 64 | 256 | 1 | 1 | 0 | 56 | - | 51.4 | tiled_matmul_nn_auto | mm I=3136 J=256 K=64 → (5,6,4) | mm I=12544 J=256 K=64 → (5,6,4) |
| 9 | 56 | 256 | 64 | 1 | 1 | 0 | 56 | - | 51.4 | tiled_matmul_nn_auto | mm I=3136 J=64 K=256 → (8,4,16) | mm I=12544 J=64 K=256 → (8,4,16) |
| 10 | 56 | 64 | 64 | 3 | 1 | 1 | 56 | - | 115.6 | tiled_conv_auto | conv (1,22,23,16,3,3,64) | conv (4,8,16,16,3,3,64) |
| 11 | 56 | 64 | 256 | 1 | 1 | 0 | 56 | - | 51.4 | tiled_matmul_nn_auto | mm I=3136 J=256 K=64 → (5,6,4) | mm I=12544 J=256 K=64 → (5,6,4) |
| 12 | 56 | 256 | 128 | 1 | 1 | 0 | 56 | - | 102.8 | tiled_matmul_nn_auto | mm I=3136 J=128 K=256 → (5,6,16) | mm I=12544 J=128 K=256 → (5,6,16) |
| 13 | 56 | 128 | 128 | 3 | 2 | 1 | 28 | - | 115.6 | tiled_conv_auto | conv (1,22,23,16,3,3,48) | conv (4,8,16,16,3,3,48) |
| 14 | 28 | 128 | 512 | 1 | 1 | 0 | 28 | - | 51.4 | tiled_matmul_nn_auto | mm I=784 J=512 K=128 → (5,6,8) | mm I=3136 J=512 K=128 → (5,6,8) |
| 15 | 56 | 256 | 512 | 1 | 2 | 0 | 28 | - | 102.8 | tiled_conv_downsample | 28× mm I=28 J=512 K=256 → (2,16,16) | 112× mm I=28 J=512 K=256 → (2,16,16) |
| 16 | 28 | 512 | 128 | 1 | 1 | 0 | 28 | - | 51.4 | tiled_matmul_nn_auto | mm I=784 J=128 K=512 → (5,6,32) | mm I=3136 J=128 K=512 → (5,6,32) |
| 17 | 28 | 128 | 128 | 3 | 1 | 1 | 28 | - | 115.6 | tiled_conv_auto | conv (1,22,23,16,3,3,128) | conv (4,8,16,16,3,3,128) |
| 18 | 28 | 128 | 512 | 1 | 1 | 0 | 28 | - | 51.4 | tiled_matmul_nn_auto | mm I=784 J=512 K=128 → (5,6,8) | mm I=3136 J=512 K=128 → (5,6,8) |
| 19 | 28 | 512 | 128 | 1 | 1 | 0 | 28 | - | 51.4 | tiled_matmul_nn_auto | mm I=784 J=128 K=512 → (5,6,32) | mm I=3136 J=128 K=512 → (5,6,32) |
| 20 | 28 | 128 | 128 | 3 | 1 | 1 | 28 | - | 115.6 | tiled_conv_auto | conv (1,22,23,16,3,3,128) | conv (4,8,16,16,3,3,128) |
| 21 | 28 | 128 | 512 | 1 | 1 | 0 | 28 | - | 51.4 | tiled_matmul_nn_auto | mm I=784 J=512 K=128 → (5,6,8) | mm I=3136 J=512 K=128 → (5,6,8) |
| 22 | 28 | 512 | 128 | 1 | 1 | 0 | 28 | - | 51.4 | tiled_matmul_nn_auto | mm I=784 J=128 K=512 → (5,6,32) | mm I=3136 J=128 K=512 → (5,6,32) |
| 23 | 28 | 128 | 128 | 3 | 1 | 1 | 28 | - | 115.6 | tiled_conv_auto | conv (1,22,23,16,3,3,128) | conv (4,8,16,16,3,3,128) |
| 24 | 28 | 128 | 512 | 1 | 1 | 0 | 28 | - | 51.4 | tiled_matmul_nn_auto | mm I=784 J=512 K=128 → (5,6,8) | mm I=3136 J=512 K=128 → (5,6,8) |
| 25 | 28 | 512 | 256 | 1 | 1 | 0 | 28 | - | 102.8 | tiled_matmul_nn_auto | mm I=784 J=256 K=512 → (5,6,32) | mm I=3136 J=256 K=512 → (5,6,32) |
| 26 | 28 | 256 | 256 | 3 | 2 | 1 | 14 | - | 115.6 | tiled_conv_auto | conv (1,14,14,32,3,3,105) | conv (4,9,14,16,3,3,48) |
| 27 | 14 | 256 | 1024 | 1 | 1 | 0 | 14 | - | 51.4 | tiled_matmul_nn_auto | mm I=196 J=1024 K=256 → (5,6,16) | mm I=784 J=1024 K=256 → (5,6,16) |
| 28 | 28 | 512 | 1024 | 1 | 2 | 0 | 14 | - | 102.8 | tiled_conv_downsample | 14× mm I=14 J=1024 K=512 → (1,15,32) | 56× mm I=14 J=1024 K=512 → (1,15,32) |
| 29 | 14 | 1024 | 256 | 1 | 1 | 0 | 14 | - | 51.4 | tiled_matmul_nn_auto | mm I=196 J=256 K=1024 → (5,5,51) | mm I=784 J=256 K=1024 → (5,5,51) |
| 30 | 14 | 256 | 256 | 3 | 1 | 1 | 14 | - | 115.6 | tiled_conv_auto | conv (1,14,14,32,3,3,240) | conv (4,9,14,16,3,3,144) |
| 31 | 14 | 256 | 1024 | 1 | 1 | 0 | 14 | - | 51.4 | tiled_matmul_nn_auto | mm I=196 J=1024 K=256 → (5,6,16) | mm I=784 J=1024 K=256 → (5,6,16) |
| 32 | 14 | 1024 | 256 | 1 | 1 | 0 | 14 | - | 51.4 | tiled_matmul_nn_auto | mm I=196 J=256 K=1024 → (5,5,51) | mm I=784 J=256 K=1024 → (5,5,51) |
| 33 | 14 | 256 | 256 | 3 | 1 | 1 | 14 | - | 115.6 | tiled_conv_auto | conv (1,14,14,32,3,3,240) | conv (4,9,14,16,3,3,144) |
| 34 | 14 | 256 | 1024 | 1 | 1 | 0 | 14 | - | 51.4 | tiled_matmul_nn_auto | mm I=196 J=1024 K=256 → (5,6,16) | mm I=784 J=1024 K=256 → (5,6,16) |
| 35 | 14 | 1024 | 256 | 1 | 1 | 0 | 14 | - | 51.4 | tiled_matmul_nn_auto | mm I=196 J=256 K=1024 → (5,5,51) | mm I=784 J=256 K=1024 → (5,5,51) |
| 36 | 14 | 256 | 256 | 3 | 1 | 1 | 14 | - | 115.6 | tiled_conv_auto | conv (1,14,14,32,3,3,240) | conv (4,9,14,16,3,3,144) |
| 37 | 14 | 256 | 1024 | 1 | 1 | 0 | 14 | - | 51.4 | tiled_matmul_nn_auto | mm I=196 J=1024 K=256 → (5,6,16) | mm I=784 J=1024 K=256 → (5,6,16) |
| 38 | 14 | 1024 | 256 | 1 | 1 | 0 | 14 | - | 51.4 | tiled_matmul_nn_auto | mm I=196 J=256 K=1024 → (5,5,51) | mm I=784 J=256 K=1024 → (5,5,51) |
| 39 | 14 | 256 | 256 | 3 | 1 | 1 | 14 | - | 115.6 | tiled_conv_auto | conv (1,14,14,32,3,3,240) | conv (4,9,14,16,3,3,144) |
| 40 | 14 | 256 | 1024 | 1 | 1 | 0 | 14 | - | 51.4 | tiled_matmul_nn_auto | mm I=196 J=1024 K=256 → (5,6,16) | mm I=784 J=1024 K=256 → (5,6,16) |
| 41 | 14 | 1024 | 256 | 1 | 1 | 0 | 14 | - | 51.4 | tiled_matmul_nn_auto | mm I=196 J=256 K=1024 → (5,5,51) | mm I=784 J=256 K=1024 → (5,5,51) |
| 42 | 14 | 256 | 256 | 3 | 1 | 1 | 14 | - | 115.6 | tiled_conv_auto | conv (1,14,14,32,3,3,240) | conv (4,9,14,16,3,3,144) |
| 43 | 14 | 256 | 1024 | 1 | 1 | 0 | 14 | - | 51.4 | tiled_matmul_nn_auto | mm I=196 J=1024 K=256 → (5,6,16) | mm I=784 J=1024 K=256 → (5,6,16) |
| 44 | 14 | 1024 | 512 | 1 | 1 | 0 | 14 | - | 102.8 | tiled_matmul_nn_auto | mm I=196 J=512 K=1024 → (5,5,51) | mm I=784 J=512 K=1024 → (5,5,51) |
| 45 | 14 | 512 | 512 | 3 | 2 | 1 | 7 | - | 115.6 | tiled_conv_auto | conv (1,7,7,96,3,3,113) | conv (4,7,7,32,3,3,96) |
| 46 | 7 | 512 | 2048 | 1 | 1 | 0 | 7 | - | 51.4 | tiled_matmul_nn_auto | mm I=49 J=2048 K=512 → (4,8,32) | mm I=196 J=2048 K=512 → (5,6,32) |
| 47 | 14 | 1024 | 2048 | 1 | 2 | 0 | 7 | - | 102.8 | tiled_conv_auto (downsample) | conv (1,7,7,160,1,1,624) ds | conv (4,7,7,32,1,1,568) ds |
| 48 | 7 | 2048 | 512 | 1 | 1 | 0 | 7 | - | 51.4 | tiled_matmul_nn_auto | mm I=49 J=512 K=2048 → (4,6,51) | mm I=196 J=512 K=2048 → (5,5,51) |
| 49 | 7 | 512 | 512 | 3 | 1 | 1 | 7 | - | 115.6 | tiled_conv_auto | conv (1,7,7,112,3,3,119) | conv (4,7,7,32,3,3,208) |
| 50 | 7 | 512 | 2048 | 1 | 1 | 0 | 7 | - | 51.4 | tiled_matmul_nn_auto | mm I=49 J=2048 K=512 → (4,8,32) | mm I=196 J=2048 K=512 → (5,6,32) |
| 51 | 7 | 2048 | 512 | 1 | 1 | 0 | 7 | - | 51.4 | tiled_matmul_nn_auto | mm I=49 J=512 K=2048 → (4,6,51) | mm I=196 J=512 K=2048 → (5,5,51) |
| 52 | 7 | 512 | 512 | 3 | 1 | 1 | 7 | - | 115.6 | tiled_conv_auto | conv (1,7,7,112,3,3,119) | conv (4,7,7,32,3,3,208) |
| 53 | 7 | 512 | 2048 | 1 | 1 | 0 | 7 | - | 51.4 | tiled_matmul_nn_auto | mm I=49 J=2048 K=512 → (4,8,32) | mm I=196 J=2048 K=512 → (5,6,32) |
"""

# gemmini.md 7.3: every conv through tiled_conv_auto, dev semantics
TABLE_7_3 = """
| 1 | 224,3→64,7x7,s2,pool | 1 | (1,6,17,16,7,7,3) | 2799/504 | 160 | n/n | 957/376/201/333 | 151/9/201 | 889,280 | 460,992 |
| 2 | 56,64→64,1x1 | 1 | (1,22,23,16,1,1,64) | 2088/506 | 36 | n/n | 803/37/201/72 | 201/4/201 | 51,328 | 50,176 |
| 3,7,10 | 56,64→64,3x3 | 1 | (1,22,23,16,3,3,64) | 2976/506 | 36 | n/n | 922/332/201/72 | 201/37/201 | 461,952 | 451,584 |
| 4,5,8,11 | 56,64→256,1x1 | 1 | (1,22,23,16,1,1,64) | 2088/506 | 144 | n/n | 3211/147/803/287 | 201/16/803 | 205,312 | 200,704 |
| 6,9 | 56,256→64,1x1 | 1 | (1,22,23,16,1,1,240) | 7830/506 | 72 | n/n | 3211/147/201/72 | 803/16/201 | 205,312 | 200,704 |
| 12 | 56,256→128,1x1 | 1 | (1,22,23,16,1,1,240) | 7830/506 | 144 | n/n | 6423/295/401/143 | 803/33/401 | 410,624 | 401,408 |
| 13 | 56,128→128,3x3,s2 | 1 | (1,22,23,16,3,3,48) | 7056/506 | 96 | n/n | 3445/590/100/43 | 401/147/100 | 474,624 | 451,584 |
| 14,18,21,24 | 28,128→512,1x1 | 1 | (1,22,23,16,1,1,128) | 4176/506 | 128 | n/n | 3211/262/401/172 | 100/66/401 | 210,944 | 200,704 |
| 15 | 56,256→512,1x1,s2 | 1 | (1,22,23,16,1,1,240) ds | 7830/506 | 256 | n/n | 6423/524/401/172 | 803/131/401 | 421,888 | 401,408 |
| 16,19,22 | 28,512→128,1x1 | 1 | (1,22,23,16,1,1,240) | 7830/506 | 96 | n/n | 3211/262/100/43 | 401/66/100 | 210,944 | 200,704 |
| 17,20,23 | 28,128→128,3x3 | 1 | (1,22,23,16,3,3,128) | 5952/506 | 32 | n/n | 922/590/100/43 | 100/147/100 | 474,624 | 451,584 |
| 25 | 28,512→256,1x1 | 1 | (1,22,23,16,1,1,240) | 7830/506 | 192 | n/n | 6423/524/201/86 | 401/131/201 | 421,888 | 401,408 |
| 26 | 28,256→256,3x3,s2 | 1 | (1,14,14,32,3,3,105) | 8190/392 | 24 | n/n | 1606/590/50/14 | 201/590/50 | 484,704 | 451,584 |
| 27,31,34,37,40,43 | 14,256→1024,1x1 | 1 | (1,14,14,32,1,1,256) | 3648/392 | 32 | Y/n | 50/262/201/57 | 50/262/201 | 202,752 | 200,704 |
| 28 | 28,512→1024,1x1,s2 | 1 | (1,14,14,32,1,1,512) ds | 7296/392 | 32 | Y/n | 100/524/201/57 | 401/524/201 | 405,504 | 401,408 |
| 29,32,35,38,41 | 14,1024→256,1x1 | 1 | (1,14,14,32,1,1,568) | 8192/392 | 16 | Y/n | 201/262/50/14 | 201/262/50 | 205,920 | 200,704 |
| 30,33,36,39,42 | 14,256→256,3x3 | 1 | (1,14,14,32,3,3,240) | 8160/392 | 16 | Y/n | 50/590/50/14 | 50/590/50 | 456,192 | 451,584 |
| 44 | 14,1024→512,1x1 | 1 | (1,14,14,32,1,1,568) | 8192/392 | 32 | Y/n | 201/524/100/29 | 201/524/100 | 411,840 | 401,408 |
| 45 | 14,512→512,3x3,s2 | 1 | (1,7,7,96,3,3,113) | 8150/294 | 30 | n/n | 602/2359/25/14 | 100/2359/25 | 601,344 | 451,584 |
| 46,50,53 | 7,512→2048,1x1 | 1 | (1,7,7,160,1,1,512) | 6688/490 | 13 | Y/n | 25/1049/100/57 | 25/1049/100 | 237,568 | 200,704 |
| 47 | 14,1024→2048,1x1,s2 | 1 | (1,7,7,160,1,1,624) ds | 8151/490 | 26 | Y/n | 50/2097/100/57 | 201/2097/100 | 475,136 | 401,408 |
| 48,51 | 7,2048→512,1x1 | 1 | (1,7,7,160,1,1,624) | 8151/490 | 16 | n/n | 401/1049/25/14 | 100/1049/25 | 237,568 | 200,704 |
| 49,52 | 7,512→512,3x3 | 1 | (1,7,7,112,3,3,119) | 8145/343 | 25 | n/n | 125/2359/25/14 | 25/2359/25 | 584,640 | 451,584 |
| 1 | 224,3→64,7x7,s2,pool | 4 | (2,2,20,16,7,7,3) | 3387/504 | 672 | n/n | 5786/1581/803/1530 | 602/9/803 | 4,503,296 | 1,843,968 |
| 2 | 56,64→64,1x1 | 4 | (4,8,16,16,1,1,64) | 2112/512 | 112 | n/n | 3211/115/803/229 | 803/4/803 | 201,600 | 200,704 |
| 3,7,10 | 56,64→64,3x3 | 4 | (4,8,16,16,3,3,64) | 3456/512 | 112 | n/n | 4317/1032/803/229 | 803/37/803 | 1,814,400 | 1,806,336 |
| 4,5,8,11 | 56,64→256,1x1 | 4 | (4,8,16,16,1,1,64) | 2112/512 | 448 | n/n | 12845/459/3211/918 | 803/16/3211 | 806,400 | 802,816 |
| 6,9 | 56,256→64,1x1 | 4 | (4,8,16,16,1,1,240) | 7920/512 | 224 | n/n | 12845/459/803/229 | 3211/16/803 | 806,400 | 802,816 |
| 12 | 56,256→128,1x1 | 4 | (4,8,16,16,1,1,240) | 7920/512 | 448 | n/n | 25690/918/1606/459 | 3211/33/1606 | 1,612,800 | 1,605,632 |
| 13 | 56,128→128,3x3,s2 | 4 | (4,8,16,16,3,3,48) | 7776/512 | 192 | n/n | 14729/1180/401/115 | 1606/147/401 | 1,815,552 | 1,806,336 |
| 14,18,21,24 | 28,128→512,1x1 | 4 | (4,8,16,16,1,1,128) | 4224/512 | 256 | n/n | 12845/524/1606/459 | 401/66/1606 | 806,912 | 802,816 |
| 15 | 56,256→512,1x1,s2 | 4 | (4,8,16,16,1,1,240) ds | 7920/512 | 512 | n/n | 25690/1049/1606/459 | 3211/131/1606 | 1,613,824 | 1,605,632 |
| 16,19,22 | 28,512→128,1x1 | 4 | (4,8,16,16,1,1,240) | 7920/512 | 192 | n/n | 12845/524/401/115 | 1606/66/401 | 806,912 | 802,816 |
| 17,20,23 | 28,128→128,3x3 | 4 | (4,8,16,16,3,3,128) | 6912/512 | 64 | n/n | 4178/1180/401/115 | 401/147/401 | 1,815,552 | 1,806,336 |
| 25 | 28,512→256,1x1 | 4 | (4,8,16,16,1,1,240) | 7920/512 | 384 | n/n | 25690/1049/803/229 | 1606/131/803 | 1,613,824 | 1,605,632 |
| 26 | 28,256→256,3x3,s2 | 4 | (4,9,14,16,3,3,48) | 7632/504 | 192 | n/n | 13763/1180/201/57 | 803/590/201 | 1,815,552 | 1,806,336 |
| 27,31,34,37,40,43 | 14,256→1024,1x1 | 4 | (4,9,14,16,1,1,240) | 7800/504 | 256 | n/n | 12845/524/803/229 | 201/262/803 | 806,912 | 802,816 |
| 28 | 28,512→1024,1x1,s2 | 4 | (4,9,14,16,1,1,240) ds | 7800/504 | 384 | n/n | 25690/1049/803/229 | 1606/524/803 | 1,613,824 | 1,605,632 |
| 29,32,35,38,41 | 14,1024→256,1x1 | 4 | (4,9,14,16,1,1,240) | 7800/504 | 160 | n/n | 12845/524/201/57 | 803/262/201 | 806,912 | 802,816 |
| 30,33,36,39,42 | 14,256→256,3x3 | 4 | (4,9,14,16,3,3,144) | 7632/504 | 64 | n/n | 3670/1180/201/57 | 201/590/201 | 1,815,552 | 1,806,336 |
| 44 | 14,1024→512,1x1 | 4 | (4,9,14,16,1,1,240) | 7800/504 | 320 | n/n | 25690/1049/401/115 | 803/524/401 | 1,613,824 | 1,605,632 |
| 45 | 14,512→512,3x3,s2 | 4 | (4,7,7,32,3,3,96) | 7872/392 | 96 | n/n | 6423/2359/100/57 | 401/2359/100 | 1,889,280 | 1,806,336 |
| 46,50,53 | 7,512→2048,1x1 | 4 | (4,7,7,32,1,1,512) | 7296/392 | 64 | Y/n | 100/1049/401/229 | 100/1049/401 | 839,680 | 802,816 |
| 47 | 14,1024→2048,1x1,s2 | 4 | (4,7,7,32,1,1,568) ds | 8192/392 | 128 | Y/n | 201/2097/401/229 | 803/2097/401 | 1,705,600 | 1,605,632 |
| 48,51 | 7,2048→512,1x1 | 4 | (4,7,7,32,1,1,568) | 8192/392 | 64 | n/n | 6423/1049/100/57 | 401/1049/100 | 852,800 | 802,816 |
| 49,52 | 7,512→512,3x3 | 4 | (4,7,7,32,3,3,208) | 7956/392 | 48 | n/n | 1606/2359/100/57 | 100/2359/100 | 1,889,280 | 1,806,336 |
"""

# gemmini.md 6.1: DOSA artifact layers (dosa semantics, padding k/2, input extent (out-1)s+k-2pad)
TABLE_6_1 = """
| 3 | 64 | 112 | 7 | 2 | (1,22,23,16,7,7,3) | 120 | 750 / 282 / 803 | 2,515,072 | 2,577,642 – 2,577,699 | 17.9 % |
| 64 | 64 | 56 | 1 | 1 | (1,22,23,16,1,1,64) | 36 | 803 / 37 / 201 | 51,328 | 186,955 – 226,179 | 26.8 % |
| 64 | 64 | 56 | 3 | 1 | (1,22,23,16,3,3,64) | 36 | 922 / 332 / 201 | 461,952 | 537,803 – 538,764 | 84.0 % |
| 64 | 256 | 56 | 1 | 1 | (1,22,23,16,1,1,64) | 144 | 3211 / 147 / 803 | 205,312 | 510,114 – 653,902 | 39.3 % |
| 256 | 64 | 56 | 1 | 1 | (1,22,23,16,1,1,240) | 72 | 3211 / 147 / 201 | 205,312 | 833,367 – 909,964 | 24.1 % |
| 256 | 128 | 56 | 1 | 1 | (1,22,23,16,1,1,240) | 144 | 6423 / 295 / 401 | 410,624 | 1,194,556 – 1,379,592 | 33.6 % |
| 128 | 128 | 28 | 3 | 2 | (1,22,23,16,3,3,48) | 96 | 3327 / 590 / 100 | 474,624 | 628,118 – 704,030 | 71.9 % |
| 128 | 512 | 28 | 1 | 1 | (1,22,23,16,1,1,128) | 128 | 3211 / 262 / 401 | 210,944 | 457,001 – 587,119 | 43.9 % |
| 256 | 512 | 28 | 1 | 2 | (1,22,23,16,1,1,64) | 512 | 24781 / 524 / 401 | 421,888 | 2,452,866 – 3,198,599 | 16.4 % |
| 512 | 128 | 28 | 1 | 1 | (1,22,23,16,1,1,240) | 96 | 3211 / 262 / 100 | 210,944 | 614,626 – 695,342 | 32.7 % |
| 128 | 128 | 28 | 3 | 1 | (1,22,23,16,3,3,128) | 32 | 922 / 590 / 100 | 474,624 | 628,884 – 636,613 | 71.8 % |
| 512 | 256 | 28 | 1 | 1 | (1,22,23,16,1,1,240) | 192 | 6423 / 524 / 201 | 421,888 | 987,544 – 1,143,548 | 40.6 % |
| 256 | 256 | 14 | 3 | 2 | (1,14,14,32,3,3,105) | 24 | 1493 / 590 / 50 | 484,704 | 596,874 – 657,000 | 75.7 % |
| 256 | 1024 | 14 | 1 | 1 | (1,14,14,32,1,1,256) | 32 | 1606 / 262 / 201 | 202,752 | 343,736 – 412,036 | 58.4 % |
| 512 | 1024 | 14 | 1 | 2 | (1,14,14,32,1,1,160) | 128 | 11944 / 524 / 201 | 405,504 | 1,272,647 – 1,910,279 | 31.5 % |
| 1024 | 256 | 14 | 1 | 1 | (1,14,14,32,1,1,568) | 16 | 1606 / 262 / 50 | 205,920 | 517,519 – 573,768 | 38.8 % |
| 256 | 256 | 14 | 3 | 1 | (1,14,14,32,3,3,240) | 16 | 401 / 590 / 50 | 456,192 | 683,380 – 749,771 | 66.1 % |
| 1024 | 512 | 14 | 1 | 1 | (1,14,14,32,1,1,568) | 32 | 3211 / 524 / 100 | 411,840 | 739,350 – 835,523 | 54.3 % |
| 512 | 512 | 7 | 3 | 2 | (1,7,7,96,3,3,113) | 30 | 519 / 2359 / 25 | 601,344 | 950,713 – 1,104,389 | 47.5 % |
| 512 | 2048 | 7 | 1 | 1 | (1,7,7,160,1,1,512) | 13 | 326 / 1049 / 100 | 237,568 | 526,394 – 586,484 | 38.1 % |
| 1024 | 2048 | 7 | 1 | 2 | (1,7,7,160,1,1,368) | 39 | 2250 / 2097 / 100 | 475,136 | 864,214 – 1,056,582 | 46.4 % |
| 2048 | 512 | 7 | 1 | 1 | (1,7,7,160,1,1,624) | 16 | 401 / 1049 / 25 | 237,568 | 604,086 – 652,535 | 33.2 % |
| 512 | 512 | 7 | 3 | 1 | (1,7,7,112,3,3,119) | 25 | 125 / 2359 / 25 | 584,640 | 777,089 – 805,890 | 58.1 % |
"""

RESNET = layer_names("resnet50.")
STEM_POOL = Pool(3, 2, 1)
DEV, DOSA = GemminiConfig(), GemminiConfig(semantics="dosa")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _ints(text: str) -> tuple[int, ...]:
    """Every integer in ``text``: "(1,22,23)" -> (1, 22, 23), "957/376" -> (957, 376)."""
    return tuple(int(v) for v in re.findall(r"\d+", text))


def _number(text: str) -> int:
    """One number with thousands separators: "2,515,072" -> 2515072."""
    return int(text.replace(",", ""))


def _rows(table: str) -> list[list[str]]:
    return [_cells(line) for line in table.strip().splitlines()]


def _layer(number: int, batch: int):
    """Catalogue spec of ResNet-50 conv ``number`` (gemmini.md 7.2 numbering) and its pool."""
    return get_layer(RESNET[number - 1], batch), (STEM_POOL if number == 1 else None)


@functools.lru_cache(maxsize=None)
def _dev_cost(number: int, batch: int):
    spec, pool = _layer(number, batch)
    return vendor_layer_cost(spec, config=DEV, pool=pool)


def _kb_close(nbytes: int, kb: int) -> bool:
    """The tables print KB = 1000 B rounded to integers."""
    return abs(nbytes / 1000 - kb) <= 0.5


# ---- gemmini.md 7.2 ---------------------------------------------------------------------------
ROWS_7_2 = _rows(TABLE_7_2)


def test_table_7_2_matches_catalogue():
    assert [int(r[0]) for r in ROWS_7_2] == list(range(1, 54))
    for row in ROWS_7_2:
        number, in_h, c_in, c_out, k, s, pad, out_h = (int(v) for v in row[:8])
        spec, _ = _layer(number, 1)
        assert (spec.in_size[0], spec.in_channels, spec.out_channels, spec.kernel_size[0],
                spec.stride[0], spec.padding[0], spec.out_size[0]) == (in_h, c_in, c_out, k, s,
                                                                       pad, out_h)
        assert round(spec.G / 1e6, 1) == float(row[9])
        assert (row[8] != "-") == (number == 1)


def _check_7_2_entry(number: int, batch: int, entry: str) -> None:
    spec, pool = _layer(number, batch)
    if entry.startswith("conv"):
        tile = conv_auto(spec, DEV, pool)
        assert tile.as_tuple() == _ints(entry), (number, batch, entry)
        assert tile.downsample == entry.endswith("ds")
        return
    match = re.fullmatch(r"(?:(\d+)× )?mm I=(\d+) J=(\d+) K=(\d+) → \((\d+),(\d+),(\d+)\)", entry)
    assert match, entry
    repeat, (dim_i, dim_j, dim_k, *tile) = match.group(1), (int(v) for v in match.groups()[1:])
    assert matmul_auto(dim_i, dim_j, dim_k, DEV).as_tuple() == tuple(tile)
    h_out = spec.out_size[0]
    if repeat is None:      # tiled_matmul_nn_auto: I = batch H W, J = C_out, K = C_in
        assert (dim_i, dim_j, dim_k) == (batch * h_out * h_out, spec.out_channels,
                                         spec.in_channels)
    else:                   # tiled_conv_downsample: one matmul per image and even input row
        assert (int(repeat), dim_i) == (batch * spec.in_size[0] // 2, spec.in_size[1] // 2)
        assert (dim_j, dim_k) == (spec.out_channels, spec.in_channels)


@pytest.mark.parametrize("row", ROWS_7_2, ids=lambda r: f"conv{r[0]}")
def test_table_7_2_tiles(row):
    _check_7_2_entry(int(row[0]), 1, row[11])
    _check_7_2_entry(int(row[0]), 4, row[12])


# ---- gemmini.md 7.3 ---------------------------------------------------------------------------
ROWS_7_3 = _rows(TABLE_7_3)


@pytest.mark.parametrize("row", ROWS_7_3, ids=lambda r: f"b{r[2]}-conv{r[0].split(',')[0]}")
def test_table_7_3(row):
    numbers, batch = _ints(row[0]), int(row[2])
    for number in numbers:
        spec, pool = _layer(number, batch)
        cost = _dev_cost(number, batch)
        assert cost.tile.as_tuple() == _ints(row[3])[:7]
        assert cost.tile.downsample == row[3].endswith("ds")
        assert (cost.tile.spad_rows, cost.tile.acc_rows) == _ints(row[4])
        assert cost.calls == int(row[5])
        assert (cost.a_reuse, cost.b_reuse) == tuple(f == "Y" for f in row[6].split("/"))
        kb = _ints(row[7])
        got = [cost.dram_bytes[s] for s in ("input", "weight", "output", "bias")]
        assert all(_kb_close(g, k) for g, k in zip(got, kb)), (number, got, kb)
        out_h, out_w = spec.out_size if pool is None else (pool.pooled(spec.out_size[0]),) * 2
        ideal = (spec.size_input, spec.size_filter, spec.batch * spec.out_channels * out_h * out_w)
        assert all(_kb_close(g, k) for g, k in zip(ideal, _ints(row[8])))
        assert cost.exec_cycles == _number(row[9])
        assert spec.G // 256 == _number(row[10])


@pytest.mark.parametrize("batch, expected_mb, exec_util", [
    (1, {"input": 77.0, "weight": 29.7, "output": 10.5, "bias": 4.2}, 0.915),
    (4, {"input": 541.0, "weight": 48.3, "output": 42.1, "bias": 13.9}, None)])
def test_table_7_3_network_totals(batch, expected_mb, exec_util):
    costs = [_dev_cost(n, batch) for n in range(1, 54)]
    for stream, mb in expected_mb.items():
        total = sum(c.dram_bytes[stream] for c in costs) / 1e6
        # 0.1 MB = the printed precision; the doc's batch-4 output total (42.1) is 0.05 above
        # the sum of its own per-layer rows (42,048 KB = 4 x 10,511,872 B, tiling-independent)
        assert abs(total - mb) <= 0.1 if batch == 4 else abs(total - mb) <= 0.05, stream
    if exec_util is not None:
        util = sum(c.macs for c in costs) / (256 * sum(c.exec_cycles for c in costs))
        assert abs(util - exec_util) < 0.0005


# ---- gemmini.md 6.1 ---------------------------------------------------------------------------
ROWS_6_1 = _rows(TABLE_6_1)


def _dosa_spec(c_in: int, c_out: int, out: int, k: int, s: int) -> ConvSpec:
    pad = k // 2
    return ConvSpec(batch=1, in_channels=c_in, out_channels=c_out,
                    in_size=(out - 1) * s + k - 2 * pad, kernel_size=k, stride=s, padding=pad)


@pytest.mark.parametrize("row", ROWS_6_1, ids=lambda r: "x".join(r[:5]))
def test_table_6_1_dosa(row):
    spec = _dosa_spec(*(int(v) for v in row[:5]))
    assert spec.out_size[0] == int(row[2])
    cost = vendor_layer_cost(spec, config=DOSA)
    assert cost.tile.as_tuple() == _ints(row[5]) and not cost.tile.downsample
    assert cost.calls == int(row[6])
    kb = _ints(row[7])
    got = [cost.dram_bytes[s] for s in ("input", "weight", "output")]
    assert all(_kb_close(g, k) for g, k in zip(got, kb)), (got, kb)
    assert cost.dram_bytes["bias"] == 0 and not (cost.a_reuse or cost.b_reuse)
    assert cost.exec_cycles == _number(row[8])


def test_fc_matmul_and_stem_checks():
    assert matmul_auto(1, 1000, 2048, DOSA).as_tuple() == (1, 8, 56)       # 6.1 FC row
    stem = _dosa_spec(3, 64, 112, 7, 2)
    assert conv_auto(stem, DOSA).dosa_string == "7_7_23_22_3_16_1"           # section 8
    assert vendor_layer_cost(stem, config=DOSA).exec_cycles == 2_515_072     # section 4.7
    # 4.3 worked trace: the 28x28 s2 256->256 layer ends at kchs = 105, spad 8190, acc 392
    tile = conv_auto(get_layer("resnet50.layer3.0.conv2", 1), DEV)
    assert (tile.kchs, tile.spad_rows, tile.acc_rows) == (105, 8190, 392)
    # not double-buffered: initial guess (8, 8, 64) blocks, limits 16384 / 1024 rows
    big = matmul_auto(4096, 4096, 4096, DEV, double_buffered=False)
    assert big.spad_rows <= 16384 and big.acc_rows <= 1024 and big.tile_I >= 8


# ---- configuration ----------------------------------------------------------------------------
def test_named_configs():
    default = GemminiConfig.named()
    assert (default.scratch_bytes, default.acc_total_bytes) == (256 * 1024, 64 * 1024)
    assert (default.spad_rows_limit, default.acc_rows_limit) == (8192, 512)
    assert default.dma_max_bytes == 64 and default.peak_macs_per_cycle == 256
    chip = GemminiConfig.named("chip")
    assert (chip.scratch_bytes, chip.acc_total_bytes) == (64 * 1024, 32 * 1024)
    large = GemminiConfig.named("large_chip", bw_eff=12.0)
    assert (large.dim, large.scratch_bytes, large.acc_total_bytes) == (32, 128 * 1024, 64 * 1024)
    assert large.dma_max_bytes == 64 and large.bw_eff == 12.0
    assert GemminiConfig.named("lean").spad_rows_limit == 8192
    dosa = GemminiConfig.named("default", semantics="dosa")
    assert not (dosa.has_bias or dosa.has_operand_reuse or dosa.has_downsample
                or dosa.has_first_layer_opt)
    assert DEV.has_bias and DEV.replace(bias=False).has_bias is False
    assert DEV.replace(semantics="dosa").has_operand_reuse is False
    assert GemminiConfig.named("chip").to_dict()["acc_rows_limit"] == 256


@pytest.mark.parametrize("changes, field", [
    ({"bw_eff": 16.5}, "bw_eff"), ({"bw_eff": 0}, "bw_eff"), ({"semantics": "new"}, "semantics"),
    ({"dim": 0}, "dim"), ({"acc_rows": 2.5}, "acc_rows"), ({"bias": "yes"}, "bias")])
def test_config_validation(changes, field):
    with pytest.raises(ParconvError, match=field):
        GemminiConfig(**changes)


def test_config_errors_and_pool():
    with pytest.raises(ParconvError, match="config name"):
        GemminiConfig.named("huge")
    with pytest.raises(ParconvError, match="unknown GemminiConfig field"):
        GemminiConfig.named("chip", spad_kib=3)
    with pytest.raises(ParconvError, match="pool padding"):
        Pool(2, 2, 2)
    assert Pool(3, 2, 1).pooled(112) == 56 and not Pool().active


def test_float_spec_keeps_memory_bytes():
    spec = get_layer("resnet50.layer3.1.conv2", 1, dtype="float32")
    cfg = DEV.for_spec(spec)
    assert (cfg.input_bytes, cfg.output_bytes, cfg.scratch_bytes, cfg.acc_total_bytes) == (
        4, 4, DEV.scratch_bytes, DEV.acc_total_bytes)
    cost = vendor_layer_cost(spec, config=DEV)
    int8 = vendor_layer_cost(get_layer("resnet50.layer3.1.conv2", 1), config=DEV)
    assert cost.tile.spad_rows <= cfg.spad_rows_limit and cost.macs == int8.macs
    assert cost.dram_bytes["total"] > int8.dram_bytes["total"]
    assert DEV.fits(spec, cost.tile) and not DEV.fits(spec, int8.tile)   # 8160 > 2048 rows
    assert DEV.for_spec(get_layer("resnet50.conv1", 1)) is DEV


def test_footprint_examples():
    assert footprint_rows((1, 22, 23, 16, 3, 3, 64)) == (2976, 506)
    assert footprint_rows((1, 14, 14, 32, 3, 3, 105), stride=2) == (8190, 392)
    assert footprint_rows((1, 6, 17, 16, 7, 7, 3), stride=2, pool=STEM_POOL) == (2799, 504)
    assert footprint_rows((1, 22, 23, 16, 1, 1, 240), stride=2, downsample=True) == (7830, 506)
    # dilation 2 widens the kernel window to 5 rows: A = 1 * 1 * (4 + 4) * (4 + 4)
    assert footprint_rows((1, 4, 4, 16, 3, 3, 16), kernel_dilation=2) == (64 + 144, 16)


def test_capacity_is_enforced():
    spec = get_layer("resnet50.layer1.0.conv2", 1)
    with pytest.raises(ParconvError, match="does not fit"):
        vendor_layer_cost(spec, (1, 56, 56, 64, 3, 3, 64), DEV)
    with pytest.raises(ParconvError, match="porows must be in"):
        vendor_layer_cost(spec, (1, 57, 4, 16, 3, 3, 16), DEV)
    with pytest.raises(ParconvError, match="7 positive integers"):
        vendor_layer_cost(spec, (1, 2, 3), DEV)
    tiny = GemminiConfig(spad_bank_rows=1, acc_rows=2)     # 2 spad rows a tile: (1,)*7 needs 5
    with pytest.raises(ParconvError, match="smallest tile"):
        conv_auto(get_layer("resnet50.conv1", 1), tiny)


def test_tile_conversions():
    tile = conv_auto(get_layer("resnet50.layer1.0.conv2", 1), DEV)
    assert VendorConvTile.from_nkchwrs(tile.as_nkchwrs()).as_tuple() == tile.as_tuple()
    assert tile.describe() == "(1,22,23,16,3,3,64)"
    assert tile.to_dict()["tile"] == [1, 22, 23, 16, 3, 3, 64]
    assert exec_cycles(1, 22, 23, 16, 7, 7, 3) * 120 > 0


# ---- properties on small random layers ----------------------------------------------------------
SMALL = GemminiConfig(dim=4, spad_bank_rows=256, acc_rows=64)  # 512 spad, 32 acc rows a tile


@st.composite
def small_layers(draw):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    padding_end = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    size = tuple(max(d * (k - 1) + 1, draw(st.integers(1, 14))) for d, k in zip(dilation, kernel))
    spec = ConvSpec(batch=draw(st.integers(1, 3)), in_channels=draw(st.integers(1, 11)),
                    out_channels=draw(st.integers(1, 11)), in_size=size, kernel_size=kernel,
                    stride=stride, dilation=dilation, padding=padding, padding_end=padding_end)
    pool = draw(st.sampled_from([None, Pool(3, 2, 1), Pool(2, 2, 0)]))
    if pool is not None and min(spec.out_size) < pool.size:
        pool = None
    semantics = draw(st.sampled_from(["dev", "dosa"]))
    return spec, pool, SMALL.replace(semantics=semantics)


def _some_tile(draw, spec, pool, config):
    """The vendor tile, or a random one that fits and has at most 500 calls (walking is slow)."""
    extents = conv_extents(spec, pool)
    candidate = tuple(draw(st.integers(1, e)) for e in extents)
    calls = np.prod([-(-e // t) for e, t in zip(extents, candidate)])
    if calls <= 500 and config.fits(spec, candidate, pool=pool) and draw(st.booleans()):
        return candidate
    return conv_auto(spec, config, pool)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer=small_layers(), data=st.data())
def test_grouped_cost_equals_walking_the_calls(layer, data):
    spec, pool, config = layer
    tile = _some_tile(data.draw, spec, pool, config)
    loop = vendor_loop(spec, tile, config, pool)
    grouped, walked = vendor_layer_cost(spec, tile, config, pool).to_dict(), \
        cost_by_walking(loop).to_dict()
    for key in ("cycles", "dma_cycles", "utilization", "exec_utilization"):
        assert grouped.pop(key) == pytest.approx(walked.pop(key), rel=1e-12)
    # the calibrated model is evaluated on the groups only (walking checks the roofline terms)
    assert np.isfinite(grouped.pop("calibrated_cycles")) and \
        np.isnan(walked.pop("calibrated_cycles"))
    assert grouped == walked


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer=small_layers(), data=st.data())
def test_call_windows_cover_what_each_call_computes(layer, data):
    spec, pool, config = layer
    pool_ = pool or Pool()
    loop = vendor_loop(spec, _some_tile(data.draw, spec, pool, config), config, pool)
    written = np.zeros((spec.batch, spec.out_channels) + loop.extents[1:3], dtype=int)
    for call in iter_calls(loop):
        b, porow, pocol, poch, krow, kcol, kch = call.start
        nb, porows_, pocols_, pochs_, krows_, kcols_, kchs_ = call.size
        for window, po, n_po, k0, n_k, axis in ((call.rows, porow, porows_, krow, krows_, 0),
                                                (call.cols, pocol, pocols_, kcol, kcols_, 1)):
            n_in, n_out, _, s, p, d = spec.axis(axis)
            # pre-pool outputs the pooled ones need; the library computes a superset (its
            # window is po_len * pool_stride + pool_size - 1 long)
            o0 = max(0, po * pool_.stride - pool_.padding)
            o1 = min(n_out, (po + n_po - 1) * pool_.stride - pool_.padding + pool_.size)
            c0, c1 = window.out_range
            assert 0 <= c0 <= o0 < o1 <= c1 <= n_out
            need0 = max(0, c0 * s + k0 * d - p)
            need1 = min(n_in, (c1 - 1) * s + (k0 + n_k - 1) * d - p + 1)
            i0, i1 = window.in_range
            assert i1 - i0 == window.i_eff >= 0
            assert i0 == i1 or (0 <= i0 and i1 <= n_in)    # an empty window: all padding
            assert need1 <= need0 or (i0 <= need0 and need1 <= i1)
        assert call.bytes["input"] == (nb * call.rows.i_eff * call.cols.i_eff * kchs_
                                       * config.input_bytes * call.load_input)
        assert call.load_bias == (config.has_bias and krow == kcol == kch == 0)
        if call.store_output:
            written[b:b + nb, poch:poch + pochs_, porow:porow + porows_,
                    pocol:pocol + pocols_] += 1
    assert (written == 1).all()                      # every (pooled) output stored exactly once


@settings(max_examples=30, deadline=None)
@given(layer=small_layers())
def test_conv_auto_fits_and_cannot_grow(layer):
    spec, pool, config = layer
    tile = conv_auto(spec, config, pool)
    extents = conv_extents(spec, pool)
    assert config.fits(spec, tile, pool=pool, downsample=tile.downsample)
    assert (tile.spad_rows, tile.acc_rows) == config.footprint_rows(
        spec, tile, pool=pool, downsample=tile.downsample)
    for i in range(7):
        grown = list(tile.as_tuple())
        grown[i] += 1
        assert grown[i] > extents[i] or not config.fits(spec, grown, pool=pool,
                                                        downsample=tile.downsample)
    auto_search_steps(spec, config, pool)       # the library's loops end at the same tile


def test_operand_reuse_skips_loads():
    spec = get_layer("resnet50.layer3.1.conv3", 1)           # 14x14, 256 -> 1024: a_reuse
    cost = _dev_cost(28 + 3, 1)
    loop = vendor_loop(spec, None, DEV)
    calls = list(iter_calls(loop))
    assert loop.a_reuse and sum(c.load_input for c in calls) == 1
    assert cost.dram_bytes["input"] == spec.size_input
    no_reuse = vendor_layer_cost(spec, None, DEV.replace(operand_reuse=False))
    assert no_reuse.dram_bytes["input"] == loop.counts[3] * spec.size_input


def test_recorded_library_case_5x5_stride_2():
    """Recorded from the compiled library: batch 3, 20 -> 36 channels, 5x5 stride 2, padding 1,
    input 30x30, output 15x15 -> tile (3, 11, 15, 16, 5, 5, 20).  ``tiled_conv_auto`` takes the
    output size from its caller and pocols can never exceed it, so 15 output columns mean the
    library ran a 15x15 output: the far side is padded by 2 (``padding_end``), i.e. (30 + 1 + 2 -
    5) // 2 + 1 = 15.  The symmetric layer (padding 1 both sides) has a 14x14 output, and the
    same heuristic then gives 12/14 (its own, different, problem)."""
    recorded = ConvSpec(batch=3, in_channels=20, out_channels=36, in_size=(30, 30),
                        kernel_size=(5, 5), stride=(2, 2), padding=(1, 1), padding_end=(2, 2))
    assert recorded.out_size == (15, 15)
    assert conv_auto(recorded).as_tuple() == (3, 11, 15, 16, 5, 5, 20)
    symmetric = recorded.replace(padding_end=(1, 1))
    assert symmetric.out_size == (14, 14)
    assert conv_auto(symmetric).as_tuple() == (3, 12, 14, 16, 5, 5, 20)


def test_auto_search_steps_by_hand():
    """16 -> 16 1x1 on 4x4 with 12 accumulator rows per tile (acc rows = porows pocols, one
    block of 16 channels): both footprints before the loops; phase 1 shrinks pochs (16 -> 1,
    lowest index of the tie with kchs), kchs (16 -> 1) and porows (4 -> 3: 12 rows); phase 2
    meets pocols at its maximum; phase 3's passes 1-15 each grow pochs and kchs by one (porows
    fits the scratchpad but not the accumulator; batch, pocols, krows, kcols at their maximum),
    and pass 16 grows nothing (pochs and kchs now at their maximum too)."""
    spec = ConvSpec(batch=1, in_channels=16, out_channels=16, in_size=(4, 4), kernel_size=1)
    config = GemminiConfig(semantics="dosa", acc_rows=24)
    assert conv_auto(spec, config).as_tuple() == (1, 3, 4, 16, 1, 1, 16)
    assert auto_search_steps(spec, config) == {
        "shrink": 3, "fits_spad": 1 + 15 * 3 + 1, "spad_full": 0,
        "at_max": 1 + 15 * 4 + 6, "accepted": 15 * 2}
    assert set(auto_search_steps(spec, config)) == set(AUTO_SEARCH_PATHS)


@pytest.mark.parametrize("network", ["resnet50", "vgg16", "alexnet"])
def test_auto_search_replay_ends_at_conv_auto_on_dev_layers(network):
    # pooled stem, downsample layers and batch 4 included (the replay raises if it ends
    # elsewhere); the search scans all seven sizes at least once more than it grows
    for name in layer_names(network + "."):
        for batch in (1, 4):
            spec = get_layer(name, batch)
            pool = (3, 2, 1) if name == "resnet50.conv1" else None
            steps = auto_search_steps(spec, DEV, pool)
            assert steps["fits_spad"] + steps["spad_full"] + steps["at_max"] >= 7 + \
                steps["accepted"]


def test_vendor_layer_cost_charges_the_search_to_tiled_conv_auto():
    spec = get_layer("resnet50.layer3.1.conv1", 1)
    auto = vendor_layer_cost(spec, config=DEV)
    given = vendor_layer_cost(spec, auto.tile.as_tuple(), DEV)
    search = auto_search_cycles(auto_search_steps(spec, DEV))
    assert search > 0 and auto.search_cycles == search and given.search_cycles == 0.0
    assert auto.calibrated_cycles == pytest.approx(given.calibrated_cycles + search, rel=1e-12)
    assert auto.cycles == given.cycles                  # the roofline never includes it
    assert auto.to_dict()["search_cycles"] == search
    assert vendor_layer_cost(spec, auto.tile.as_tuple(), DEV,
                             auto_search=True).calibrated_cycles == auto.calibrated_cycles
    assert vendor_layer_cost(spec, None, DEV, auto_search=False).calibrated_cycles == \
        given.calibrated_cycles
