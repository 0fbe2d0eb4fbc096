"""Generate notebooks/0*.ipynb (without outputs) from the cell lists below: edit here, then run
`python scripts/make_notebooks.py` from the repository root (the notebooks stay thin and reviewable)."""
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this repository's lib, run from anywhere
from lib.figure_notes import NOTES  # noqa: E402  (the figures' reading notes, shared with report.md)

REPO = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent

COMMON_PARAMS = '''profile = "smoke"  # smoke: CI-sized (minutes on a CPU) | quick: reduced, CPU-friendly | full: the STUDY.md recipe (GPU)
data_source = None  # None: $CIFAR10_SOURCE or 'official' (a download); 'shared': the JPEG-q75 copy; or a folder / .tar.gz
publish = False  # True: write to the committed results/<profile>/, figs/[<profile>/] and report.md
root = None  # None: this repository; a folder relocates every output (the tests use this)
reuse_only = None  # True: compute nothing, stop naming what has no matching result; False: off; None: unchanged
#   in this kernel ($CIFAR10_REUSE_ONLY at first): after True, set False (not None) to turn it off'''

SETUP_HEAD = '''import sys
from pathlib import Path

if (Path.cwd().parent / "lib").is_dir():  # opened from notebooks/: make the repository's `lib` importable
    sys.path.insert(0, str(Path.cwd().parent))

import pandas as pd
from IPython.display import Image, Markdown, display

'''

SETUP_TAIL = '''
set_reuse_only(reuse_only)  # True: in this kernel, training, probes, slices and cost measurements refuse to start
source = canonical_source(data_source)
dirs = output_dirs(profile, publish=publish or None, root=root)
print(f"profile {profile!r}, data {source}\\nresults -> {dirs.results}\\nfigures -> {dirs.figs}")'''


def params_cell(extra: str):
    """The papermill parameters cell (tagged `parameters`)."""
    cell = new_code_cell(COMMON_PARAMS + "\n" + extra.strip())
    cell.metadata["tags"] = ["parameters"]
    return cell


def setup_cell(imports: str):
    """Imports ('from M import a, b' lines, merged per module and sorted with the reuse_only switch's), then any
    other set-up lines, and the output folders of this run."""
    names: dict[str, set] = {}
    rest = []  # the cell's other lines (set-up code after the imports), in their order
    for line in imports.strip().splitlines() + ["from lib.results import set_reuse_only"]:
        if not line.startswith("from "):
            rest += [line] if line.strip() else []
            continue
        module, _, imported = line.removeprefix("from ").partition(" import ")
        names.setdefault(module, set()).update(n.strip() for n in imported.split(","))
    lines = [f"from {m} import {', '.join(sorted(n))}" for m, n in sorted(names.items())]
    return new_code_cell(SETUP_HEAD + "\n".join(lines + ([""] + rest if rest else [])) + "\n" + SETUP_TAIL)


def md(text):
    return new_markdown_cell(text.strip())


def code(text):
    return new_code_cell(text.strip())


NB01 = [
    params_cell('''force = False  # True: retrain even when a finished result with the same configuration exists; a run name
# or a list of them (e.g. "p1-CANet-s1"): retrain just those, reuse the others
seeds = [0]  # one run per seed; the first seed's run is the one shown and visualised
model = "CANet"  # CANet_tiny | CANet_light | CANet | CANet_pro
num_epochs = None  # None: the profile's epochs; an int overrides them (the notebook test uses 1)
precision = None  # None: the recipe's "auto" (bf16 on a GPU, fp32 on a CPU); "bf16": CANet 3x faster on an AMX CPU'''),
    md('''# 01 - Train CANet with the Part 1 recipe

Trains one CANet variant (`model`, default `CANet`) with the recipe of STUDY.md section 4: AdamW (lr 1e-3,
weight decay 1e-3) for the first int(0.8 x epochs) epochs (56 of 70 in the full recipe, 6 of 8 in `quick`),
then SGD (momentum 0.9) from the learning rate reached, ExponentialLR (gamma 0.96) per epoch, label smoothing
0.1, batch 256, flip / crop / random erasing and MixUp / CutMix. The checkpoint is chosen on validation
accuracy; the test set is evaluated for it only. Finished results with the same configuration are reused (set
`force = True` to retrain). The run chosen here (its first seed) is recorded as the one notebook 03 visualises,
except with `reuse_only = True`, which records nothing.'''),
    md('''**Viewing the committed study without training.** `report.md` shows the `quick` profile on the JPEG-q75 copy.
To see that run here, set in the first cell `profile = "quick"`, `data_source = "shared"`, `publish = True`
and `seeds = [0]` (`[0, 1, 2]` works too), keeping `model = "CANet"`, `force = False`, `num_epochs = None` and `precision = None`,
and `reuse_only = True`. A finished result in `results/quick/` whose configuration matches is read back, not
retrained; another model, seed, number of epochs or precision is a new configuration, which trains, or with
`reuse_only = True` stops with its name. `publish = True` also redraws the training-curves figure in the
committed `figs/quick/` from the same files; with `reuse_only = True` the run marker `results/quick/part1-main.json`
(which run notebook 03 and the report show) is left as it is.'''),
    setup_cell('''from lib import part1
from lib.data import canonical_source
from lib.part1_plots import plot_training_curves
from lib.paths import output_dirs
from lib.train import model_summary'''),
    md('''## The configuration (the recipe, sized by the profile)

The first seed's run; the runs of the other seeds in `seeds` differ only in `seed`.'''),
    code('''cfg = part1.configs(profile, source, [model], seeds, num_epochs, precision)[0]
pd.Series(cfg.to_dict(), dtype=object).to_frame("value")'''),
    md('''## Architecture: the torchinfo summary'''),
    code('''print(model_summary(model))'''),
    md('''## Train (or reuse the finished result)'''),
    code('''results = part1.run_part1(profile, source, dirs, models=[model], seeds=seeds, force=force, num_epochs=num_epochs,
                          precision=precision)
result = results[0]
part1.mark_main(dirs, result);  # notebook 03 and the report visualise this run (not under reuse_only); `;` hides the path'''),
    md('''## Training curves: learning rate, train / validation loss, validation accuracy'''),
    md(NOTES["p1_curves"]),
    code('''display(Image(filename=plot_training_curves(result, dirs.figs)))'''),
    code('''print(f"{result['name']}, epoch by epoch (accuracies in %; epochs counted from 1):")
part1.history_frame(result)'''),
    md('''## Test accuracy of the model selected on validation accuracy'''),
    code('''for r in results:
    print(part1.headline(r))'''),
]

NB02 = [
    params_cell('''force = False  # True: retrain even when a finished result with the same configuration exists; a run name
# or a list of them (e.g. ["p1-ResNet18-s1"]): retrain just those, reuse the others
seeds = [0]  # e.g. [0, 1, 2]: the table shows mean ± std over the seeds present
models = None  # None: all nine Part 1 models; or a list of names
num_epochs = None  # None: the profile's epochs; an int overrides them (the notebook test uses 1)
precision = None  # None: the recipe's "auto" (bf16 on a GPU, fp32 on a CPU); "bf16": CANet 3x faster on an AMX CPU
cost_batch = None  # inference batch for the throughput column (None: 1024 on a GPU, 64 on a CPU)
cost_iters = None  # timed inference batches (None: 20 on a GPU, 3 on a CPU)'''),
    md('''# 02 - The comparison: nine models, one recipe

Trains (or reuses) the four CANets and the five torchvision baselines with the Part 1 recipe, for every
seed in `seeds`, measures their cost (FLOPs, inference throughput), and builds the comparison table:
mean ± std of the test accuracy over the seeds present, beside the original report's numbers. A model
is called better than another only where a Welch t-test over seeds says so (lib.stats).'''),
    md('''**Viewing the committed study without training.** `report.md` shows the `quick` profile on the JPEG-q75 copy,
eight models with three seeds each (CANet_pro was not run). To see that comparison here, set in the first
cell `profile = "quick"`, `data_source = "shared"`, `publish = True`, `seeds = [0, 1, 2]` and
`models = ["CANet_tiny", "CANet_light", "CANet", "ShuffleNetV2", "MobileNetV2", "ResNet18", "ResNet34", "VGG11"]`,
keeping `force = False`, `num_epochs = None` and `precision = None`, and `reuse_only = True`. A finished result in `results/quick/`
whose configuration matches is read back, not retrained; with `models = None` the list includes CANet_pro, which
has no result and would start training (hours on a CPU), or with `reuse_only = True` stops with its name.
`publish = True` also writes to the committed folders: the figures in `figs/quick/` are redrawn from the same files,
and on a machine other than the one recorded in `results/quick/cost-*.json` the cost cell re-measures
inference speed (no training) into those files, unless `reuse_only = True` (the recorded ones are shown).'''),
    setup_cell('''from lib import part1, report
from lib.data import canonical_source
from lib.models import PART1_MODELS
from lib.part1_plots import plot_accuracy_vs_cost, plot_per_class_heatmap
from lib.paths import output_dirs

models = list(models or PART1_MODELS)'''),
    md('''## Train (or reuse) every model and seed'''),
    code('''results = part1.run_part1(profile, source, dirs, models=models, seeds=seeds, force=force, num_epochs=num_epochs,
                          precision=precision)
part1.runs_frame(results)'''),
    md('''## Cost: FLOPs per image, parameters, inference images/s'''),
    code('''costs = part1.compute_costs(dirs, models, batch_size=cost_batch, iters=cost_iters)
part1.costs_frame(costs)'''),
    md('''## The comparison table

All Part 1 results of these models in the results folder (every seed present), sorted by parameters.'''),
    code('''all_results = part1.load_results(dirs, models=models)
cost_files = part1.load_costs(dirs, models=models)
table = part1.part1_table(dirs, results=all_results, costs=cost_files)  # a DataFrame, shown below as Markdown'''),
    code('''display(Markdown(report.comparison_markdown(table, all_results, cost_files)))'''),
    md('''## Who wins? Only what the seeds support'''),
    code('''for sentence in report.ranking(table):
    print(sentence)'''),
    md('''## Accuracy against parameters and FLOPs (Pareto front marked)'''),
    md(NOTES["p1_acc_vs_cost"]),
    code('''for path in plot_accuracy_vs_cost(table, dirs.figs, subtitle=report.context_line(all_results)):
    display(Image(filename=path))'''),
    md('''## Per-class test accuracy'''),
    md(NOTES["p1_per_class"]),
    code('''display(Image(filename=plot_per_class_heatmap(all_results, dirs.figs, subtitle=report.context_line(all_results))))'''),
]

NB03 = [
    params_cell('''model = None  # None: the run notebook 01 trained; or a CANet variant with a finished result
seed = None  # None: notebook 01's seed (for its model; for another model, or without notebook 01's run: 0)
num_images = 6  # test images in the attention figures (distinct classes where possible)'''),
    md('''# 03 - What the trained CANet learned

Visualises the run trained by notebook 01 (the CANet variant and seed recorded there; set `model` /
`seed` to pick another finished run): first-layer filters, the per-epoch distributions of the SE, SA and
unit_transform weights, attention maps on real test images, per-class accuracy and the confusion matrix.'''),
    md('''**Viewing the committed study.** This notebook trains nothing: it shows a finished run. For the run behind
`report.md` (the `quick` profile on the JPEG-q75 copy), set in the first cell `profile = "quick"`,
`data_source = "shared"` and `publish = True`, keeping `model = None` and `seed = None` (the run notebook 01
recorded in `results/quick/part1-main.json`: CANet, seed 0). The filters and attention maps need that run's
checkpoint (`checkpoints/quick/p1-CANet-s0.pt`), which git does not track: it exists only where the study was
trained. Without it (a fresh clone) the three cells that need it (filters, attention maps, their spread) say so
and draw nothing, and the others draw from the
result files; `python -m lib run --profile quick --data shared --models CANet --seeds 0` trains the run again
into `build/quick/` (30-65 min on a 2-core CPU; the committed result is left alone): `publish = False` then
shows that run, and `publish = True` uses its weights only if they reproduce the committed run (the same selected
epoch and validation accuracy). `publish = True` redraws the figures in the committed `figs/quick/` from the same
files.'''),
    setup_cell('''from lib import part1, report
from lib.attention import save_attention_spread, trained_or_none
from lib.data import canonical_source
from lib.part1_plots import plot_attention, plot_confusion, plot_filters, plot_weight_ridges, run_caption
from lib.paths import output_dirs
from lib.train import resolve_device'''),
    code('''result = part1.main_run(dirs, model, seed, source)  # refused if trained on other data than `source`
caption = run_caption(result)
print(part1.headline(result))'''),
    md('''## First-layer convolution filters (block 0: both paths and the shortcut)'''),
    md(NOTES["p1_filters"]),
    code('''net = trained_or_none(result, resolve_device("auto"))  # the validation-selected checkpoint; None if not here
if net is not None:
    display(Image(filename=plot_filters(net, dirs.figs, subtitle=caption, model_name=result["model"])))'''),
    md('''## How the attention weights moved during training (ridge plots, one density per epoch)'''),
    md(NOTES["p1_ridge"]),
    code('''for path in plot_weight_ridges(part1.weight_history(dirs, result), dirs.figs, subtitle=caption):
    display(Image(filename=path))'''),
    md('''## Attention on real test images: where SA looks, which channels SE passes on'''),
    md(NOTES["p1_attention"]),
    code('''if net is not None:
    X, y = part1.sample_test_images(result, n=64)  # a pool; the figure picks distinct classes from it
    for path in plot_attention(net, X, y, dirs.figs, *part1.normalization(result), n_images=num_images,
                               subtitle=caption, model_name=result["model"]):
        display(Image(filename=path))
else:
    print("Skipped: the attention maps need the trained weights (see the filters cell above).")'''),
    md('''How much each gate varies within one image, per block, on 256 test images (max - min, the mean over the
images): SA's map and the gate the block's output puts on path a (U's output, averaged over channels), SE's
weights over channels and the gate on path b (averaged over positions). Saved for the report.'''),
    code('''if net is not None:
    save_attention_spread(net, result, dirs)
    display(Markdown(report.attention_markdown(dirs, result)))  # as the report shows it
else:
    print("Skipped: the spread needs the trained weights (see the filters cell above); the report shows the "
          "committed record, if any.")'''),
    md('''## Per-class accuracy and the confusion matrix (test set)'''),
    code('''part1.per_class_frame(result)'''),
    md(NOTES["p1_confusion"]),
    code('''display(Image(filename=plot_confusion(result, dirs.figs, subtitle=caption)))'''),
]

NB04 = [
    params_cell('''force = False  # True: rerun every Part 2 experiment even when its result exists; a name or a list of them
# (e.g. ["bn-VGG_A-lr0.002-s2020"]): just those (a probe run or a slice: its pair; a run at lr 1e-3: the slices too)
probe_overrides = None  # None: the profile's probe sizes (lib.bn_study.PROBE_SIZES); a dict changes some (tests)'''),
    md('''# 04 - Batch Normalization on VGG-A (Part 2)

VGG-A with and without BN under the original protocol (Adam at four learning rates, batch 128, no
augmentation, per-step loss and last-layer gradient range), the probe of Santurkar et al. (loss
landscape, gradient predictiveness, effective beta-smoothness along the gradient) and a 1-D loss slice.
All compute is in `lib.bn_study` (results are files, reused unless `force`); `lib.bn_plots` draws the
figures from those files only.'''),
    md('''**Viewing the committed study without training.** `report.md` shows the `quick` profile on the JPEG-q75 copy.
To see those Part 2 results here, set in the first cell `profile = "quick"`, `data_source = "shared"` and
`publish = True`, keeping `force = False` and `probe_overrides = None`, and `reuse_only = True`. The protocol runs,
probe runs and loss slices in `results/quick/` whose configuration matches are read back, not recomputed (with
`reuse_only = True`, one that does not match stops with its name instead of training); `publish = True` also
redraws the figures in the committed `figs/quick/` from those files.'''),
    setup_cell('''from lib import bn_plots, bn_study, report
from lib.data import canonical_source
from lib.paths import output_dirs
from lib.plotting import show_figure'''),
    md('''## Compute: the protocol runs, the probes, the loss slices'''),
    code('''summary = bn_study.run_bn_study(profile, source, dirs, force=force, probe_overrides=probe_overrides)'''),
    md('''## Figures

Drawn only from the result files above (nothing is trained here). In every figure blue is VGG-A without BN
("Standard") and red VGG-A with BN ("Standard + BatchNorm").'''),
    code('''figures = bn_plots.plot_all(dirs)  # the PNGs drawn; a figure whose result files are missing is not'''),
    md("### BN vs no BN: accuracy\n\n" + NOTES["p2_accuracy_lr1e-3"]),
    code('''show_figure(figures, "p2_accuracy_lr1e-3")'''),
    md("### Loss band over the learning rates\n\n" + NOTES["p2_loss_band"]),
    code('''show_figure(figures, "p2_loss_band")'''),
    md("### Gradient range of the last layer\n\n" + NOTES["p2_grad_range"]),
    code('''show_figure(figures, "p2_grad_range")'''),
    md("### The Santurkar et al. measurements\n\n" + NOTES["p2_santurkar"]),
    code('''show_figure(figures, "p2_santurkar")'''),
    md("### Gradient change against the step size\n\n" + NOTES["p2_grad_diff_eta"]),
    code('''show_figure(figures, "p2_grad_diff_eta")'''),
    md("### Filter-normalised 1-D loss slice\n\n" + NOTES["p2_loss_slice"]),
    code('''show_figure(figures, "p2_loss_slice")'''),
    md('''## The numbers (as the report shows them)'''),
    code('''display(Markdown(report.part2_markdown(summary)))'''),
]


def write(name, cells):
    # The issue: each notebook *starts* with the parameters cell; the title follows it.
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    cells = params + [c for c in cells if c not in params]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, c in enumerate(nb.cells):  # stable ids: regenerating gives the same file
        c["id"] = f"{name[:2]}-{i:02d}"
    nbformat.validate(nb)
    path = REPO / "notebooks" / f"{name}.ipynb"
    path.parent.mkdir(exist_ok=True)
    nbformat.write(nb, str(path))
    print("wrote", path)


write("01_train_canet", NB01)
write("02_baselines", NB02)
write("03_visualize", NB03)
write("04_batchnorm", NB04)
