"""Swin Transformer V2 (timm's swin_transformer_v2) against timm itself with perturbed random weights: every
pretrained architecture through the converter CLI and back bit for bit, the forward API and attention maps, the
windowXtoY fine-tuned windows, another image and window size, and fine-tuning through train.py. Reduced depth
(one block per stage, two in the third: a plain and a shifted window block) where the test is not about depth, and
reduced width where it is not about width (swinv2_tiny_window8_256 converts at its own)."""
import json
import re

import jax
import numpy as np
import pytest

from conftest import (convert_and_export, fine_tune_family, full_size_matches_registry, images, max_diff, port,
                      run_timm, timm_model)

NAMES = [f'swinv2_{s}_window{w}_256' for s in ('tiny', 'small', 'base') for w in (8, 16)] + [
    f'swinv2_{s}_window12{t}' for s in ('base', 'large') for t in ('_192', 'to16_192to256', 'to24_192to384')]
SHORT = dict(depths=(1, 1, 2, 1))
NARROW = dict(embed_dim=32, num_heads=(1, 2, 4, 8))  # 32-wide heads as at full size, a third of tiny's width


def tol(ref):
    return 1e-5 * max(1, float(np.abs(ref).max()))


def test_every_pretrained_swinv2_is_in_the_zoo():
    import timm
    z = json.load(open('vitjax/zoo.json'))
    pretrained = sorted({n.split('.')[0] for n in timm.list_models(module='swin_transformer_v2', pretrained=True)})
    assert pretrained == sorted(NAMES)
    assert all(z['architectures'][n]['family'] == 'swinv2' for n in NAMES)
    for name in NAMES:  # windowXtoY: pre-trained at X, run at Y
        config = z['architectures'][name]['config']
        pre, fine = re.search(r'window(\d+)(?:to(\d+))?', name).groups()
        assert config['window_size'] == int(fine or pre), name
        assert config['pretrained_window_sizes'] == ([int(pre)] * 3 + [int(pre) // 2] if fine else [0] * 4), name


@pytest.mark.slow
@pytest.mark.parametrize('name', ['swinv2_tiny_window8_256', 'swinv2_small_window16_256',
                                  'swinv2_base_window12to24_192to384'])
def test_swinv2_converts_exports_and_loads(tmp_path, name):
    """convert (parity at 1e-5) -> load -> export -> the same tensors, bit for bit: windows 8 and 16, and one
    pre-trained at a smaller window (tests/hub_zoo.py does every architecture at depth 1)."""
    saved, model, variables = convert_and_export(tmp_path, name, 'swinv2',
                                                 SHORT if name == 'swinv2_tiny_window8_256' else {**SHORT, **NARROW})
    attn = variables['params']['layers_2']['blocks_1']['attn']
    assert attn['logit_scale'].shape == (model.num_heads[2], 1, 1) and attn['cpb_mlp_0']['kernel'].shape == (2, 512)
    pre, fine = re.search(r'window(\d+)(?:to(\d+))?', name).groups()  # windowXtoY: pre-trained at X, run at Y
    assert 'relative_position_bias_table' not in attn and saved['window_size'] == int(fine or pre)
    assert saved['pretrained_window_sizes'] == ([int(pre)] * 3 + [int(pre) // 2] if fine else [0] * 4)


@pytest.fixture(scope='module')
def small():
    """Two blocks per stage at 256 px, window 8: stage maps 64, 32, 16, 8, the odd blocks shifted but the last
    stage's (its map is one window); NARROW."""
    tm = timm_model('swinv2_tiny_window8_256', seed=1, depths=(2, 2, 2, 2), **NARROW, num_classes=5)
    model, variables = port(tm)
    return tm, model, variables, images(model)


@pytest.mark.slow
def test_forward_api_matches_timm(small):
    tm, model, variables, x = small
    cases = (dict(), dict(indices=2, norm=True))

    def forward(v, x):  # one program: one compile, and XLA computes the trunk the outputs share once
        feats = model.apply(v, x, method=model.forward_features)
        return (model.apply(v, x), feats, model.apply(v, feats, pre_logits=True, method=model.forward_head),
                [model.apply(v, x, method=model.forward_intermediates, **kw) for kw in cases])
    logits, feats, pre_ours, inter = jax.jit(forward)(variables, x)
    ref = run_timm(tm, x).numpy()
    assert max_diff(logits, ref) < tol(ref)
    t_feats = run_timm(tm, x, lambda m, t: m.forward_features(t)).numpy()
    assert feats.shape == (2, 8, 8, 256) and max_diff(feats, t_feats) < tol(t_feats)
    pre = run_timm(tm, x, lambda m, t: m.forward_head(m.forward_features(t), pre_logits=True)).numpy()
    assert max_diff(pre_ours, pre) < tol(pre)
    for kw, (final, maps) in zip(cases, inter):
        t_final, t_maps = run_timm(tm, x, lambda m, t: m.forward_intermediates(t, **kw))
        assert [m.shape for m in maps] == [tuple(m.shape) for m in t_maps]
        assert all(max_diff(a, b.numpy()) < tol(b.numpy()) for a, b in zip(maps, t_maps))
        assert max_diff(final, t_final.numpy()) < tol(t_final.numpy())


@pytest.mark.slow
def test_attention_weights_match_timm_and_lie_on_the_map(small):
    """A shifted block's and the last stage's softmax weights equal timm's; a shifted block's, laid on its map,
    equal a reading through the cyclic roll and the window partition themselves."""
    import jax.numpy as jnp
    from vitjax import inference
    from vitjax.models.swin import window_partition, windows_on_map
    tm, model, variables, x = small
    _, state = jax.jit(lambda v, x: model.apply(v, x, mutable=['intermediates']))(variables, x)
    inter = state['intermediates']
    for s, b in ((0, 1), (3, 1)):
        got = {}
        hook = tm.layers[s].blocks[b].attn.attn_drop.register_forward_hook(lambda m, i, o: got.setdefault('w', o))
        run_timm(tm, x)
        hook.remove()
        assert max_diff(inter[f'layers_{s}'][f'blocks_{b}']['attn']['attn'][0], got['w'].numpy()) < 1e-5
    win, shift = model.block_window(0, 1)
    assert (win, shift) == ((8, 8), (4, 4))
    fused = np.asarray(inter['layers_0']['blocks_1']['attn']['attn'][0]).mean(axis=1)  # (B * 64, 64, 64)
    grid = np.asarray(windows_on_map(fused, (64, 64), win, shift))
    ids = jnp.roll(jnp.arange(64 * 64).reshape(1, 64, 64, 1), (-4, -4), axis=(1, 2))
    where = np.asarray(window_partition(ids, win))[..., 0]  # (windows, 64): the token at each window place
    window_of, place = np.zeros(4096, int), np.zeros(4096, int)
    window_of[where.reshape(-1)], place[where.reshape(-1)] = np.repeat(np.arange(64), 64), np.tile(np.arange(64), 64)
    rng = np.random.default_rng(0)
    for _ in range(300):
        b, (q, k) = rng.integers(2), rng.integers(4096, size=2)
        same = window_of[q] == window_of[k]
        assert grid[b, q, k] == (fused[b * 64 + window_of[q], place[q], place[k]] if same else 0)
    maps = inference.attention_maps(model, variables, x)
    assert maps['rollout'].shape == (2, 8, 8) and maps['rollout'].max() == 1 and maps['rollout'].min() == 0


@pytest.mark.slow
def test_another_size_and_window_is_timms_own(tmp_path):
    """A windowXtoY model (its CPB offsets normalised by the pre-training windows) loaded at 320 px with window
    10 equals timm built so with the same weights (no table to resize), and `porting.convert --img-size
    --window-size` passes its own parity check."""
    import timm
    import vitjax
    from porting import convert, random_init
    name = 'swinv2_base_window12to16_192to256'
    tm = random_init.create(name, seed=5, num_classes=4, **SHORT, **NARROW)
    src = random_init.save(tm, tmp_path / 'm.safetensors')
    args = ['--model', name, '--checkpoint', str(src), '--model-arg', 'depths=(1,1,2,1)', '--model-arg', 'embed_dim=32',
            '--model-arg', 'num_heads=(1,2,4,8)']
    assert convert.main([*args, '--out', str(tmp_path / 'out')]) == 0
    model, variables = vitjax.load(tmp_path / 'out', img_size=320, window_size=10)
    assert tuple(model.pretrained_window_sizes) == (12, 12, 12, 6)
    other = timm.create_model(name, num_classes=4, img_size=320, window_size=10, **SHORT, **NARROW).eval()
    other.load_state_dict(tm.state_dict())
    x = images(model, batch=1)
    ref = run_timm(other, x).numpy()
    assert max_diff(jax.jit(model.apply)(variables, x), ref) < tol(ref)
    assert convert.main([*args, '--img-size', '320', '--window-size', '10', '--out', str(tmp_path / 'o320'),
                         '--tolerance', '1e-5']) == 0


@pytest.mark.zoo
@pytest.mark.slow
def test_swinv2_full_size(tmp_path):
    model = full_size_matches_registry(tmp_path, 'swinv2_tiny_window8_256', 1e-5)
    assert tuple(model.depths) == (2, 2, 6, 2) and model.num_features == 768


def test_bad_swinv2_configs_are_named():
    import jax.numpy as jnp
    from vitjax.models.swin_v2 import SwinTransformerV2 as M
    for kwargs, msg in [(dict(pretrained_window_sizes=(8, 8)), r'pretrained_window_sizes=\(8, 8\)'),
                        (dict(pretrained_window_sizes=(8, 8, 8, -1)), 'pretrained_window_sizes'),
                        (dict(head_dim=16), 'head_dim=16'), (dict(window_size=0), 'window_size=0')]:
        with pytest.raises(ValueError, match=msg):
            M(img_size=64, depths=(1, 1, 1, 1), **kwargs).init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))


@pytest.mark.slow
def test_train_py_fine_tunes_swinv2(tmp_path):
    """`--config.init` a converted, narrowed Swin V2 at 32 px (maps 8, 4, 2, 1; window 4), trained on the
    digits, then `vitjax features` / `attention` and export back with parity."""
    fine_tune_family(tmp_path, 'swinv2_tiny_window8_256', dict(depths=(1, 1, 2, 1), embed_dim=32,
                                                               num_heads=(2, 2, 4, 4), img_size=32, window_size=4),
                     32)


@pytest.mark.slow
def test_grad_checkpointing_gives_the_same_logits_and_gradients():
    import jax.numpy as jnp
    from vitjax.models.swin_v2 import SwinTransformerV2
    model = SwinTransformerV2(img_size=32, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4,
                              pretrained_window_sizes=(0, 0), num_classes=3)
    x = images(model)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    # away from init (zero head, unit norms, zero biases); numpy noise: an eager jax.random.normal compiles per shape
    noise = np.random.default_rng(1)
    variables = jax.tree.map(lambda p: p + 0.1 * noise.standard_normal(p.shape).astype(np.float32), variables)
    remat = model.clone(grad_checkpointing=True)
    run = lambda m: jax.jit(jax.value_and_grad(lambda v: jnp.sum(m.apply(v, x) ** 2)))
    (a, ga), (b, gb) = run(model)(variables), run(remat)(variables)
    assert float(a) > 0 and abs(float(a) - float(b)) <= 1e-6 * float(a)
    assert all(max_diff(p, q) <= 1e-5 * max(1, float(jnp.abs(p).max())) for p, q in
               zip(jax.tree.leaves(ga), jax.tree.leaves(gb)))
