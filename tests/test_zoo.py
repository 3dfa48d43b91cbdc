"""vitjax/zoo.json and vitjax/labels/ against the installed timm (`python -m porting.zoo` writes them): the tag
entries, the label files, the --check command, and half the architectures (tests/test_zoo_archs.py: the others)."""
import json
import shutil
import subprocess
import sys

import pytest
import timm
from timm.data import ImageNetInfo

import vitjax.labels
from porting import zoo

TABLE = json.loads(zoo.TABLE.read_text())
ARCHS = sorted(zoo.architectures())


@pytest.mark.slow
def test_architectures_match_timm_first_half():  # each config read through porting.sources on the meta device
    assert zoo.check(TABLE, ARCHS[0::2]) == []


def test_table_covers_the_zoo_and_tags_match_timm():
    assert TABLE['timm_version'] == timm.__version__
    assert sorted([*TABLE['architectures'], *TABLE['left_out']]) == ARCHS
    assert not set(TABLE['architectures']) & set(TABLE['left_out'])
    want = {}
    for arch, entry in TABLE['architectures'].items():
        cfgs = zoo.pretrained_cfgs(arch)
        assert entry['tags'] == [n.partition('.')[2] for n in cfgs], arch  # timm's order: the default first
        want.update({n: zoo.tag_entry(c) for n, c in cfgs.items()})
    have = {n: {k: v for k, v in e.items() if k != 'config'} for n, e in TABLE['tags'].items()}
    assert list(zoo.diff(have, want)) == []
    assert TABLE['tags']['vit_base_patch16_224.augreg2_in21k_ft_in1k'] == {
        'crop_mode': 'center', 'crop_pct': 0.9, 'fixed_input_size': True,
        'hf_hub_id': 'timm/vit_base_patch16_224.augreg2_in21k_ft_in1k', 'input_size': [3, 224, 224],
        'interpolation': 'bicubic', 'label_set': 'imagenet-1k', 'license': 'apache-2.0', 'mean': [0.5, 0.5, 0.5],
        'num_classes': 1000, 'std': [0.5, 0.5, 0.5]}


def test_file_is_what_the_generator_writes():
    assert zoo.TABLE.read_text() == zoo.dumps(TABLE) and json.loads(zoo.dumps(TABLE)) == TABLE


def test_label_files_give_timms_names():
    sets = {e['label_set'] for e in TABLE['tags'].values()} - {None}
    assert sets <= set(vitjax.labels.label_sets()) == set(zoo.label_sets())
    for s in vitjax.labels.label_sets():
        info = ImageNetInfo(s)
        assert vitjax.labels.names(s) == info.label_descriptions(), s
        assert len(vitjax.labels.names(s)) == info.num_classes()
    for name, e in TABLE['tags'].items():
        if e['label_set']:
            assert len(vitjax.labels.names(e['label_set'])) == e['num_classes'], name
    for p in zoo.LABELS.iterdir():
        assert p.name == '__init__.py' or p.name.endswith('.gz') or p.stat().st_size <= zoo.GZIP_OVER, p
    assert list(zoo.diff_labels(zoo.LABELS)) == []


def test_label_check_names_every_edit(tmp_path):
    labels = tmp_path / 'labels'
    shutil.copytree(zoo.LABELS, labels)
    names = (labels / 'imagenet-1k.txt').read_text().split('\n')
    names[7] = 'not a cock'
    (labels / 'imagenet-1k.txt').write_text('\n'.join(names))
    (labels / 'imagenet-12k.txt').unlink()
    (labels / 'cifar-10.txt').write_text('airplane\n')
    assert list(zoo.diff_labels(labels)) == [
        'labels/cifar-10.txt: not a label set the zoo uses', 'labels/imagenet-12k.txt: missing',
        'labels/imagenet-1k.txt: 1000 lines, timm has 1000; first difference at line 8']


ONLY = ('--only', 'deit_tiny_*', 'swin_tiny_*', 'vit_base_patch16_rpn_224')


def test_check_passes_on_the_table_and_refuses_a_broken_one(tmp_path, capsys):
    assert zoo.main(['--check', *ONLY]) == 0 and capsys.readouterr().out == ''
    table = tmp_path / 'zoo.json'
    table.write_text('{"timm_version": ')
    assert zoo.main(['--check', '--table', str(table)]) == 1 and str(table) in capsys.readouterr().err


@pytest.mark.slow
def test_check_exits_1_naming_every_edit(tmp_path):
    t = json.loads(zoo.TABLE.read_text())
    t['tags']['deit_tiny_patch16_224.fb_in1k']['crop_pct'] = 0.95
    t['tags']['deit_tiny_patch16_224.fb_in1k']['label_set'] = 'imagenet-22k'
    t['architectures']['swin_tiny_patch4_window7_224']['config']['embed_dim'] = 64
    t['architectures']['swin_tiny_patch4_window7_224']['tags'].reverse()
    del t['tags']['swin_tiny_patch4_window7_224.ms_in22k']
    t['left_out']['vit_base_patch16_rpn_224'] = 'no reason'
    t['architectures']['vit_tiny_patch16_224']['family'] = 'swin'  # outside --only: not compared
    (tmp_path / 'zoo.json').write_text(zoo.dumps(t))
    proc = subprocess.run([sys.executable, '-m', 'porting.zoo', '--check', '--table', tmp_path / 'zoo.json', *ONLY],
                          capture_output=True, text=True, cwd=zoo.ROOT, timeout=600)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1 and '6 difference(s)' in proc.stderr and len(lines) == 6, proc.stdout + proc.stderr
    for want in ['architectures/swin_tiny_patch4_window7_224/config/embed_dim: table 64, timm 96',
                 'architectures/swin_tiny_patch4_window7_224/tags: table ["ms_in22k", "ms_in22k_ft_in1k", "ms_in1k"]',
                 'left_out/vit_base_patch16_rpn_224: table "no reason", timm "the source model uses block type',
                 'tags/deit_tiny_patch16_224.fb_in1k/crop_pct: table 0.95, timm 0.9',
                 'tags/deit_tiny_patch16_224.fb_in1k/label_set: table "imagenet-22k", timm "imagenet-1k"',
                 'tags/swin_tiny_patch4_window7_224.ms_in22k: missing from the table']:
        assert any(line.startswith(want) for line in lines), (want, lines)
