"""The Triton kernels of disperse_triton.py against the float64 reference, on CPU under Triton's
interpreter (TRITON_INTERPRET=1), with small shapes; skipped when triton is not installed.

The check itself is bench/check_triton.py (bench/gpu_check.sh runs it on a GPU); it also compiles the
kernels for CUDA GPUs ahead of time, which needs no GPU, to catch what the interpreter cannot: a kernel
the CUDA backend refuses, or launch settings that make ptxas spill registers. The interpreter is
chosen when a kernel is decorated, so it runs in a fresh subprocess with TRITON_INTERPRET=1 set,
leaving this pytest process (and the other tests) as they were."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import disperse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(importlib.util.find_spec('triton') is None, reason='triton is not installed')


def run_check(tmp_path, *extra, interpret=True):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('TRITON_INTERPRET', None)
    if interpret:
        env['TRITON_INTERPRET'] = '1'
    return subprocess.run([sys.executable, 'bench/check_triton.py', '--device', 'cpu', *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_triton_kernels_match_the_reference_under_the_interpreter(tmp_path):
    out = run_check(tmp_path, '--json', str(tmp_path / 'check.json'))
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / 'check.json').read_text())
    assert result['failed'] == []
    cases = {row['case'].split()[0] for row in result['results']}
    assert cases == {'angular', 'condense', 'orthogonalization', 'cross_sequence'}
    assert len(result['results']) == 2 * 4 * 5 and all(row['ok'] for row in result['results'])
    assert {row['chunk'] for row in result['results']} == {32, 16}  # both launch settings' chunk
    assert all(row['grad_scale'] > 1e-4 for row in result['results'])  # gradients that can be wrong


def cuda_backend_available():
    try:
        import triton.backends.nvidia.compiler  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not cuda_backend_available(), reason="triton's CUDA backend is not installed")
def test_kernels_compile_for_cuda_without_spills(tmp_path):
    # A100 and H100/H200, both dot precisions: every launch setting of disperse_triton.LAUNCH; no GPU is needed
    out = run_check(tmp_path, '--compile-for', '80,90', '--json', str(tmp_path / 'compile.json'), interpret=False)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads((tmp_path / 'compile.json').read_text())['results']
    assert len(rows) == 2 * 2 * 3 * 2 and all(row['ok'] for row in rows)
    assert {(row['precision'], row['arch'], row['tile'], row['chunk']) for row in rows} == {
        ('ieee', 80, 64, 16), ('ieee', 90, 64, 32), ('tf32x3', 80, 32, 16), ('tf32x3', 90, 32, 32)}
    assert all(row['spill_bytes'] == 0 and 0 < row['registers'] <= 255 for row in rows)
    # 'ieee' multiplies on the CUDA cores, 'tf32x3' on the tensor cores
    assert all(row['tensor_core_mma'] == 0 < row['ffma'] for row in rows if row['precision'] == 'ieee')
    assert all(row['tensor_core_mma'] > 0 for row in rows if row['precision'] == 'tf32x3')


def test_bad_compile_target_is_refused(tmp_path):
    out = run_check(tmp_path, '--compile-for', 'sm90', interpret=False)
    assert out.returncode == 2 and 'e.g. 80,90' in out.stderr and 'Traceback' not in out.stderr


def test_check_refuses_a_device_the_kernels_cannot_run_on(tmp_path):
    out = run_check(tmp_path, interpret=False)
    assert out.returncode == 2
    assert 'TRITON_INTERPRET=1' in out.stderr and 'Traceback' not in out.stderr


def test_auto_never_picks_the_kernel_on_cpu():
    assert disperse.IMPLEMENTATION == 'auto'
    assert disperse.choose_implementation(torch.zeros(1, 2, 3)) == 'tiled'


def test_a_case_that_raises_is_reported_not_fatal(monkeypatch):
    # without the interpreter the kernels refuse a CPU tensor: the check records it and goes on
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    monkeypatch.setattr(disperse, 'IMPLEMENTATION', 'auto')  # check() sets it; restored after the test
    monkeypatch.syspath_prepend(os.path.join(ROOT, 'bench'))
    import check_triton
    row = check_triton.check('angular', 2, 5, 3, torch.float32, 'cpu', False, torch.Generator().manual_seed(0))
    assert row['ok'] is False and row['case'] == 'angular float32 (2, 5, 3)'
    assert row['error'].startswith('RuntimeError') and 'TRITON_INTERPRET=1' in row['error']
