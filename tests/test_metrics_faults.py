"""metrics.jsonl and the other run outputs against hostile files: a line vitjax cannot read is skipped with a
warning naming the file and line (on resume and when the curves are drawn), never a traceback at the run's end;
a run file that is a link, a second hard link, a directory or a FIFO is refused before anything is written."""
import json
import os
import re

import pytest

from vitjax.train.metrics import MetricWriter, plot_curves, read_metrics

GOOD = [{'step': 1, 'split': 'train', 'loss': 2.0, 'lr': 0.1}, {'step': 3, 'split': 'eval', 'loss': 1.5,
                                                                 'accuracy': 0.5}]
BAD = {  # a line between steps 1 and 3, and what the warning says of it
    'step 1e400': (b'{"step": 1e400, "split": "train", "loss": 1}', "'step' is not a non-negative integer"),
    'step string': (b'{"step": "2", "split": "train", "loss": 1}', "'step' is not a non-negative integer"),
    'step bool': (b'{"step": true, "split": "train", "loss": 1}', "'step' is not a non-negative integer"),
    'step NaN': (b'{"step": NaN, "split": "train", "loss": 1}', "'step' is not a non-negative integer"),
    'step negative': (b'{"step": -2, "split": "train", "loss": 1}', "'step' is not a non-negative integer"),
    'step float': (b'{"step": 2.5, "split": "train", "loss": 1}', "'step' is not a non-negative integer"),
    'step huge': (b'{"step": 1' + b'0' * 40 + b', "split": "train", "loss": 1}', "'step' is not a non-negative"),
    'no step': (b'{"split": "train", "loss": 1}', "no 'step'"),
    'no split': (b'{"step": 2, "loss": 1}', "no 'split'"),
    'split not a string': (b'{"step": 2, "split": 7, "loss": 1}', "'split' is not a string"),
    'value a string': (b'{"step": 2, "split": "train", "loss": "low"}', "'loss' is not a number"),
    'value huge int': (b'{"step": 2, "split": "train", "loss": 1' + b'0' * 400 + b'}', "'loss' is not a number"),
    'a list': (b'[2, "train", 1]', 'a JSON list, not an object'),
    'a string': (b'"step 2"', 'a JSON str, not an object'),
    'not JSON': (b'step=2 loss=1', 'not valid JSON'),
    'deep nesting': (b'{"step": ' + b'[' * 100000, 'not valid JSON'),
    'not UTF-8': (b'{"step": 2, "split": "tr\xffin", "loss": 1}', 'not UTF-8'),
    'huge line': (b'{"step": 2, "split": "train", "pad": "' + b'x' * (2 << 20) + b'"}', 'longer than'),
}


def lines(*records):
    return b''.join(json.dumps(r).encode() + b'\n' for r in records)


@pytest.mark.parametrize('case', BAD)
def test_resume_keeps_going_past_lines_it_cannot_read(tmp_path, capsys, case):
    """The line is reported (file, line number, why) and left in place; the lines past the restored step are cut;
    the resumed run appends and draws its curves without a traceback."""
    bad, why = BAD[case]
    path = tmp_path / 'metrics.jsonl'
    past = {'step': 5, 'split': 'train', 'loss': 9.0}
    path.write_bytes(lines(GOOD[0]) + bad + b'\n' + lines(GOOD[1], past))
    writer = MetricWriter(str(tmp_path), resume_step=3)
    writer.write(4, 'train', loss=1.0, lr=0.05)
    writer.close()
    err = capsys.readouterr().err
    assert f'{path}: skipping 1 line(s) that are not vitjax metrics (left in the file): line 2 ({why}' in err, err
    assert path.read_bytes() == lines(GOOD[0]) + bad + b'\n' + lines(GOOD[1], {'step': 4, 'split': 'train',
                                                                                'loss': 1.0, 'lr': 0.05})
    assert plot_curves(str(path), str(tmp_path / 'curves.png')) == str(tmp_path / 'curves.png')
    assert (tmp_path / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert f'{path}: skipping 1 line(s) that are not vitjax metrics: line 2 ({why}' in capsys.readouterr().err
    assert [r['step'] for r in read_metrics(str(path))] == [1, 3, 4]


def test_resume_cuts_a_partial_last_line_and_ends_a_whole_one(tmp_path, capsys):
    """A kill mid-write leaves part of a line: cut, silently. A whole last record without its newline (an editor's
    save) is kept and ended, so the next line does not run into it."""
    path = tmp_path / 'metrics.jsonl'
    path.write_bytes(lines(GOOD[0]) + b'{"step": 2, "spl')
    MetricWriter(str(tmp_path), resume_step=3).close()
    assert path.read_bytes() == lines(GOOD[0]) and capsys.readouterr().err == ''
    path.write_bytes(lines(GOOD[0]) + lines(GOOD[1])[:-1])
    writer = MetricWriter(str(tmp_path), resume_step=3)
    writer.write(4, 'train', loss=1.0)
    writer.close()
    assert [r['step'] for r in read_metrics(str(path))] == [1, 3, 4] and 'warning' not in capsys.readouterr().err


def _user_file(tmp_path):
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'notes.jsonl').write_text('{"step": 1, "split": "train", "loss": 1.0}\nmy own notes\n')
    return mine / 'notes.jsonl'


@pytest.mark.parametrize('resume_step', [None, 0, 3])
@pytest.mark.parametrize('link', ['symlink', 'hard link'])
def test_writer_never_writes_through_a_link(tmp_path, resume_step, link):
    """metrics.jsonl linked to a user's file: refused with the path, the user's file and the link untouched."""
    user = _user_file(tmp_path)
    before = user.read_bytes()
    run = tmp_path / 'run'
    run.mkdir()
    (os.symlink if link == 'symlink' else os.link)(user, run / 'metrics.jsonl')
    with pytest.raises(ValueError, match='symbolic link' if link == 'symlink' else '2 hard links') as e:
        MetricWriter(str(run), resume_step=resume_step)
    assert str(run / 'metrics.jsonl') in str(e.value)
    assert user.read_bytes() == before and os.path.lexists(run / 'metrics.jsonl')
    assert sorted(os.listdir(run)) == ['metrics.jsonl']  # and no tensorboard/ made


@pytest.mark.parametrize('name,make,says', [
    ('metrics.jsonl', os.mkdir, 'is a directory'),
    ('metrics.jsonl', os.mkfifo, 'not a regular file'),  # opening it would wait forever for a writer
    ('curves.png', os.mkdir, 'is a directory'),
    ('summary.json', os.mkdir, 'is a directory'),
    ('summary.json', lambda p: os.symlink('/etc/hostname', p), 'symbolic link (to /etc/hostname)'),
    ('tensorboard', lambda p: open(p, 'w').close(), 'is a file, where the run writes a directory'),
])
def test_run_outputs_of_the_wrong_kind_are_refused_before_training(tmp_path, name, make, says):
    """Found when the writer opens (before the first step), not by a traceback when the run ends."""
    make(str(tmp_path / name))
    for resume_step in (None, 3):
        with pytest.raises(ValueError, match=re.escape(says)) as e:
            MetricWriter(str(tmp_path), resume_step=resume_step)
        assert str(tmp_path / name) in str(e.value) and sorted(os.listdir(tmp_path)) == [name]


def test_tensorboard_may_be_a_link_to_a_directory(tmp_path):
    """A shared TensorBoard logdir: the run only adds event files to it."""
    (tmp_path / 'logs').mkdir()
    (tmp_path / 'run').mkdir()
    os.symlink(tmp_path / 'logs', tmp_path / 'run' / 'tensorboard')
    writer = MetricWriter(str(tmp_path / 'run'))
    writer.write(1, 'train', loss=1.0)
    writer.close()
    assert [r['step'] for r in read_metrics(str(tmp_path / 'run' / 'metrics.jsonl'))] == [1]
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path / 'logs'))


def test_plot_curves_never_writes_through_a_link_or_into_a_directory(tmp_path):
    metrics = tmp_path / 'metrics.jsonl'
    metrics.write_bytes(lines(*GOOD))
    user = _user_file(tmp_path)
    before = user.read_bytes()
    os.symlink(user, tmp_path / 'curves.png')
    with pytest.raises(ValueError, match='symbolic link'):
        plot_curves(str(metrics), str(tmp_path / 'curves.png'))
    assert user.read_bytes() == before
    os.mkdir(tmp_path / 'c2.png')
    with pytest.raises(ValueError, match=re.escape(f'{tmp_path / "c2.png"} is a directory')):
        plot_curves(str(metrics), str(tmp_path / 'c2.png'))


def test_run_files_without_config_json_are_a_users_and_train_py_refuses_bad_outputs_writing_nothing(tmp_path):
    """A run writes config.json before any other run file (its lock aside): a metrics.jsonl or summary.json without
    one is the user's, never truncated. A run file of the wrong kind in a run's workdir is exit 2 before anything
    is made (no checkpoints/, no lock)."""
    import subprocess
    import sys
    from vitjax.train import workdir as workdirs
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'metrics.jsonl').write_text('my own notes\n')
    with pytest.raises(ValueError, match=r'metrics.jsonl \(with no config.json\)'):
        workdirs.check_ours(str(mine))
    (mine / 'train.lock').write_text('')  # what a run killed before writing its config leaves: still ours
    (mine / 'metrics.jsonl').unlink()
    workdirs.check_ours(str(mine))
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'config.json').write_text(json.dumps({'model': 'm', 'dataset': 'd', 'batch_size': 1, 'lr': 0.1}))
    (run / 'curves.png').mkdir()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, 'train.py', f'--workdir={run}', '--resume'], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and 'curves.png is a directory' in proc.stderr, proc.stderr[-2000:]
    assert sorted(os.listdir(run)) == ['config.json', 'curves.png']
