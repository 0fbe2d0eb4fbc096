"""How to read each figure: one text per figure, or per group of figures drawn together, shown under it in
the notebooks (scripts/make_notebooks.py) and in report.md (lib.report.figure_note), so that both say the same.
"""

# a figure, or a group drawn together (p1_ridge: one per weight group, p1_attention: SA and SE) -> how to read it
NOTES = {
    "p1_curves":
        """Three panels over the epochs (epoch 1 is the first): the learning rate (log scale), the training and
validation loss, and the validation accuracy; the dashed line and the grey shading mark the switch from AdamW to
SGD. The training loss is measured on augmented, MixUp / CutMix-mixed batches, so compare its trend rather than
its level with the validation loss. The gold star is the epoch whose checkpoint is kept (best validation
accuracy), the only one that is tested; a validation accuracy still rising at the last epoch means the run
stopped before it levelled off. Every model of one seed sees the same batches with the same augmentation and
mixing draws, so a bump in the training loss that all models share at one epoch (e.g. more, or more evenly mixed,
batches) comes from those draws, not from the models.""",
    "p1_acc_vs_cost":
        """Each point is one model: its mean test accuracy over the seeds present (error bars: ±1 standard
deviation, where there is more than one seed) against its parameter count (first figure) and its forward FLOPs
per image (second), both on a log scale. Red points are the Pareto front, joined by the dashed step line: no
other model is at least as accurate at no more cost and better in one of the two; a grey point is beaten that
way by some model. Models worth their cost lie up and to the left; read gaps between points against the error
bars, and take from the Welch tests above which differences the seeds support.""",
    "p1_per_class":
        """Rows are the models (sorted by parameters, with their number of seeds), columns the ten CIFAR-10
classes; each cell is the test accuracy on that class in %, the mean over seeds. Read along a row for a model's
weak classes and down a column for the classes that are hard for every model.""",
    "p1_filters":
        """The 3x3 RGB filters of block 0 (both paths and the shortcut) of the validation-selected checkpoint,
each scaled to its own range. Colour and edge detectors appear where training has gone on long enough;
near-random filters mean it has not.""",
    "p1_ridge":
        """One figure per weight group: SE (the channel attention's 1-D kernels 3/5/7; runs recorded before
their mixing scales were kept apart pool the scales in, and the figure's title says so; the report gives the
scales of runs that recorded them apart), SA (the spatial attention's conv on the [mean, max] maps) and the
shared `unit_transform` 1x1 gate. Each ridge is the distribution of all of that group's weights at the end of
one epoch, the first epoch at the top and the last at the bottom (long runs show an even selection of epochs);
the dotted line is zero. Look at how the ridges change from top to bottom: a shift, widening or narrowing is
training moving those weights, while ridges that hardly change mean the weights stayed close to where the first
epoch left them.""",
    "p1_attention":
        """The first figure shows each test image (title: true and predicted class, green when right, red when
wrong) with the SA gate of the first, middle and last block laid over a grey copy of it: bright is what SA
passes on, dark what it damps. SA and SE do not gate the block's output themselves: what they pass on goes
through the shared `unit_transform` U, and the block adds U's outputs times each path (plus the shortcut). So
each panel prints two ranges: the SA gate's and that of U's gate on the path (averaged over channels); a U range
close to 0.5 means the block's output hardly follows the SA map. Colours are scaled per map, so read the printed
ranges too: a narrow range means SA weighs the whole image almost alike. The second figure shows the SE channel
weights of the last two blocks, one row per image with the channels sorted by their mean weight (left), and each
image's weights sorted (right): a steep curve means SE passes a few channels on to U and damps the rest (U's 1x1
convolutions then mix the channels), and rows that look alike mean its choice hardly depends on the image.""",
    "p1_confusion":
        """The confusion matrix: rows are the true classes, columns the predicted ones, each row normalised to
100% of that class's test images. The diagonal is the per-class accuracy; the largest cells off the diagonal are
the most frequent mistakes.""",
    "p2_accuracy_lr1e-3":
        """Validation accuracy (left) and validation loss (right) per epoch of the Adam run at lr 1e-3, the
learning rate the original report compares; the legend gives each network's best validation accuracy. Look at
which curve is higher and how early it gets there; there is one run per network, so a gap is not a test of
significance.""",
    "p2_loss_band":
        """At every training step, the range (min to max) of the training loss over the four Adam learning-rate
runs: shaded is the raw per-step band, the lines a moving average. A narrow band means the runs' losses were
close at that step. It is a proxy across learning rates, not a measurement of the landscape around one
trajectory; the Santurkar et al. measurements below are that measurement.""",
    "p2_grad_range":
        """At every step of the Adam run at lr 1e-3, the largest (solid) and smallest (dashed) entry of the last
linear layer's weight gradient; shaded are the raw values, the lines a moving average. Compare the width of the
range and how much it jumps from step to step between the two networks.""",
    "p2_santurkar":
        """Both networks train with plain SGD on the same mini-batches; every few steps the probe looks along
the current gradient at several step sizes eta on the same mini-batch, leaving training untouched. Panels: (a)
the range of the loss along that line (log scale, as the paper plots it), (b) gradient predictiveness, the range
of ||g - g_eta||, how much the gradient changes along it, (c) the effective beta-smoothness, the largest
||g - g_eta|| / ||eta g||. Lower and narrower means a smoother landscape around the trajectory, where the
gradient at one point better predicts the gradient a step further; the paper asks whether BN makes it so, and the
probe table gives the medians and maxima of this run. Probes taken while a network is still on the chance-level plateau (training loss near ln 10 =
2.303) describe a network that has not started training: the caveat under the probe table says from which step both
networks train, and the findings compare the probes after it apart.""",
    "p2_grad_diff_eta":
        """||g - g_eta|| against the step size eta at the first (dashed) and the last (solid) probe of each
network (the paper's Fig. 11a). A curve that stays low means the gradient still predicts the gradient a step
further along; a steep rise means it does not.""",
    "p2_loss_slice":
        """The training loss (eval mode, on a fixed subset of training images) along one seeded random
filter-normalised direction through the validation-selected lr 1e-3 checkpoint of each network (Li et al.,
NeurIPS 2018); alpha = 0 is the trained weights. A flat, wide curve means the loss changes little when the
weights move that way, a steep one that it is sensitive. It is one direction, so it illustrates the landscape
rather than measuring it.""",
}
