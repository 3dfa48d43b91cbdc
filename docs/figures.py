"""The prediction and attention figures of docs/cli.md, from a model trained on the digits (`python train.py`).

    python docs/figures.py runs/digits/model docs/
"""
import sys
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

import vitjax
from vitjax import inference

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def main(model_dir: str, out: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, variables = vitjax.load(model_dir)
    names = inference.class_names_for(model, model_dir)
    x, y = load_digits(return_X_y=True)
    test = np.arange(len(y))[-360:]  # the tail of the set, as images a user would bring
    picks = test[::30][:12]
    images = [Image.fromarray((x[i].reshape(8, 8) * 15).astype(np.uint8)).convert('RGB') for i in picks]
    preds = inference.predict(model, variables, images, top=3, class_names=names)
    fig, axes = plt.subplots(2, 6, figsize=(12, 5.8))
    for ax, im, p, i in zip(axes.flat, images, preds, picks):
        ax.imshow(np.asarray(im), cmap='gray')
        ok = p[0]['label'] == names[y[i]]
        ax.set_title('\n'.join(f"{r['label']}: {r['probability']:.0%}" for r in p), fontsize=9,
                     color='green' if ok else 'red')
        ax.axis('off')
    fig.suptitle('vitjax predict: top-3 on held-out digits (green: top-1 is the true label)', fontsize=10)
    fig.tight_layout()
    fig.savefig(out / 'digits_predictions.png', dpi=90)
    plt.close(fig)
    xb = inference.preprocess(images[:1], model)
    maps = inference.attention_maps(model, variables, xb)
    inference.render_attention(inference.denormalize(xb[0], model), {k: v[0] for k, v in maps.items()},
                               out / 'digits_attention.png', title=f'digit {y[picks[0]]}')
    print(f"wrote {out / 'digits_predictions.png'} and {out / 'digits_attention.png'}")


if __name__ == '__main__':
    main(*sys.argv[1:3])
