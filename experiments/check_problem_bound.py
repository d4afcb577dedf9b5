# python experiments/check_problem_bound.py  -- the problem bound (balanced shares) never above the planned busiest volume
"""Item 1 of issue 8: over ResNet-50 and VGG-16 at batch 32, P = 8, 64, 512, 4096, the awkward layers of
tests/test_plan.py at every P in 1..64 and the 7x7 stride-2 P = 24 example, the problem's bound is never above
the planned busiest volume.  Prints every violation."""
import sys, time
import os
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests'))
from parconv.layers import get_layer, layer_names
from parconv.plan import make_plan
from test_plan import AWKWARD
viol=[]; n=0
jobs=[(get_layer(nm,batch=32),P) for nm in layer_names("resnet50")+layer_names("vgg16") for P in (8,64,512,4096)]
jobs+=[(s,P) for s in AWKWARD for P in range(1,65)]
from parconv.spec import ConvSpec
jobs+=[(ConvSpec(batch=16,in_channels=3,out_channels=32,in_size=(100,80),kernel_size=7,stride=2,padding=3),24)]
t=time.time()
for spec,P in jobs:
    plan=make_plan(spec,P); n+=1
    if plan.max_volume < plan.bound.value*(1-1e-9):
        viol.append((spec.name,P,str(plan.dims),plan.max_volume,plan.bound.value,plan.layout_bound.value))
print(n, "checked", len(viol), "violations", time.time()-t)
for v in viol: print(v)
