"""The Triton kernels of disperse_triton.py against the float64 references, on CPU under Triton's
interpreter (TRITON_INTERPRET=1), with small shapes; skipped when triton is not installed.

The interpreter is chosen when a kernel is decorated, so the checks run in a fresh subprocess
with TRITON_INTERPRET=1 set, leaving this pytest process (and the other tests) as they were."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = pytest.mark.skipif(importlib.util.find_spec('triton') is None, reason='triton is not installed')

VARIANTS = ('angular', 'condense', 'orthogonalization', 'cross_sequence')


def check_against_references():
    """Run in the subprocess: value and gradient of every pair variant by the Triton kernels
    (float32 and bf16 inputs) against the float64 references, to 1e-5."""
    import torch

    import disperse
    import disperse_triton
    from test_disperse import OPTIONS, REFERENCES

    disperse_triton.TILE = 16  # the smallest tile tl.dot takes: several row-blocks at small T
    options = dict(OPTIONS, margin=0.8)  # a margin that makes the hinge act on many pairs
    cases = [  # (B, T, C): T = 2, T below the tile, a multiple of it, and not; C not a multiple of CHUNK
        (2, 2, 5, torch.float32, 'brute force'), (2, 11, 7, torch.float32, 'brute force'),
        (2, 32, 40, torch.float32, 'reference'), (3, 37, 33, torch.float32, 'reference'),
        (2, 21, 9, torch.bfloat16, 'reference')]
    g = torch.Generator().manual_seed(0)
    for variant in VARIANTS:
        for B, T, C, dtype, against in cases:
            z = (torch.randn(B, T, C, generator=g, dtype=torch.float64) * 0.5 + 0.2).to(dtype)
            disperse.IMPLEMENTATION = 'triton'
            leaf = z.clone().requires_grad_()
            ours = disperse.dispersion_loss(leaf, variant, **options)
            (ours * 1.7).backward()
            ref_leaf = z.double().requires_grad_()
            if against == 'brute force':
                ref = REFERENCES[variant](ref_leaf, options)
            else:  # the full-matrix float64 implementation, itself tested against the brute force
                disperse.IMPLEMENTATION = 'reference'
                ref = disperse.dispersion_loss(ref_leaf, variant, **options)
            (ref * 1.7).backward()
            label = f'{variant} {dtype} {(B, T, C)}'
            assert ours.dtype == torch.float32, label
            assert abs(ours.item() - ref.item()) < 1e-5, (label, ours.item(), ref.item())
            assert ref_leaf.grad.abs().max() > 1e-4, label
            # autograd rounds the float32 gradient back to the input's dtype: bf16 keeps 8 bits
            rtol = 0 if dtype == torch.float32 else 2 ** -8
            torch.testing.assert_close(leaf.grad.double(), ref_leaf.grad, rtol=rtol, atol=1e-5, msg=label)
    # 'auto' never picks the kernel on CPU, even under the interpreter
    disperse.IMPLEMENTATION = 'auto'
    assert disperse._choose_implementation(torch.zeros(1, 2, 3)) == 'tiled'
    print('all triton checks passed')


def test_triton_kernels_match_references_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET='1', OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get('PYTHONPATH', '')]))
    code = 'import test_disperse_triton as t; t.check_against_references()'
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'all triton checks passed' in out.stdout

