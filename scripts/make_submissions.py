"""Regenerates submissions/: sample student notebooks, each derived from the solution.

Every submission is the solution's code with at most one defect, the student's own answers in
the formats students really use (`**Answer:` left open, bare `Answer:`, a list after it, the
answer in the next markdown cell), and saved outputs that come from really running it: the
notebook is executed with nbclient after the config's `smoke` preset is injected after its
parameters cell, and the injected cell is removed again before saving, so the file looks like
what a student hands in.

Usage: python scripts/make_submissions.py [NAME ...]   (default: all; NAME like correct.ipynb)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbformat import NotebookNode
from nbformat.v4 import new_markdown_cell

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_handout import ANSWER_LABEL, solution_code, write_notebook  # noqa: E402

from grader.config import AssignmentConfig, load_config  # noqa: E402
from grader.errors import DataError  # noqa: E402
from grader.inject import inject_parameters, is_injected  # noqa: E402
from grader.paths import REPO_ROOT, default_data_dir  # noqa: E402

SUBMISSIONS_DIR = REPO_ROOT / "submissions"
PRESET = "smoke"   # small enough that all six run in a few minutes on two CPU cores


@dataclass(frozen=True)
class Answer:
    """A student's answer to one question.

    text: the markdown as the student wrote it, label included in their style.
    layout: "same" after the question in its cell; "next" in a new markdown cell after the
    question (the question cell loses its label); "split": the question cell keeps an empty
    `**Answer:**` and the text goes into the next cell.
    """

    text: str
    layout: str = "same"


@dataclass(frozen=True)
class Submission:
    name: str
    defect: str                       # one line: what is wrong with it ("none" for the good one)
    answers: dict[str, Answer]        # by question id; a missing id leaves `**Answer:**` empty
    best_beta: str                    # the literal the student assigns to best_beta
    best_beta_line: str | None        # their "Best-tune beta = ..." markdown; None: no such line
    code_edits: tuple[tuple[str, str], ...] = field(default=())   # (solution text, student text)


SOLUTION_KL = "return 0.5 * (mu**2 + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma).sum(dim=1)"
SOLUTION_REPARAM = "return mu + torch.exp(log_sigma) * torch.randn_like(mu)"
SOLUTION_VAE_FORWARD = """    def forward(self, x):
        mu, log_sigma = self.encode(x)
        return self.decode(reparameterize(mu, log_sigma)), mu, log_sigma"""

SUBMISSIONS = [
    Submission(
        name="correct.ipynb",
        defect="none",
        best_beta="1.0",
        best_beta_line="Best-tune beta = 1.0",
        answers={
            "Q1": Answer(
                "**Answer:** The reconstructions look almost identical to the inputs, but the samples decoded "
                "from $z \\sim N(0, I)$ are mostly not digits, just blurry blobs and strokes; a few look a bit "
                "like a 0 or an 8. The autoencoder is only trained to reconstruct, so there is no constraint on "
                "where the codes of the training images end up in the latent space. They occupy some irregular "
                "region that does not match a standard normal, so most random $z$ fall into areas the decoder "
                "never saw during training, and its output there is meaningless."
            ),
            "Q2": Answer(
                "Answer: With $\\beta=0$ the KL term is switched off, so the model is trained only on "
                "reconstruction. The reconstruction loss goes down like for the AE and the reconstructions are "
                "sharp, but the KL divergence keeps increasing during training. The samples from the prior look "
                "as bad as the AE samples. Without the KL penalty nothing forces $q(z|x)$ to be close to "
                "$N(0,I)$: the encoder can make $\\sigma$ very small and spread the means out, so the VAE "
                "basically becomes a deterministic autoencoder and the prior does not describe where the codes are."
            ),
            "Q3": Answer(
                "Now the KL goes almost to 0 after the first epoch but the reconstruction loss stays high. All "
                "reconstructions look the same, a blurry average digit (kind of a mix between 0, 3 and 8), and "
                "the samples also all look like that same blob. The weight on the KL term is so large that it is "
                "cheaper for the model to ignore the input: the encoder outputs $\\mu \\approx 0$ and "
                "$\\sigma \\approx 1$ for every image, so $q(z|x)$ equals the prior and $z$ carries no information "
                "about $x$ (posterior collapse). The decoder can then only learn the mean image, which minimizes "
                "the squared error over the whole dataset.",
                layout="split",
            ),
            "Q4": Answer(
                "Answer:\n\n"
                "- Reconstructions: close to the input digit, same class and similar style (thickness, slant). "
                "A bit blurrier than the AE is ok.\n"
                "- Samples: every sample should look like a real, recognizable digit (no blobs, no two digits on "
                "top of each other).\n"
                "- Samples should also be diverse: all 10 digits should show up, in different writing styles, "
                "not the same digit over and over.\n"
                "- The KL should end up somewhere between the $\\beta=0$ and the $\\beta=10$ runs."
            ),
            "Q5": Answer(
                "**Answer:**\n\n"
                "1. In the AE the intermediate images often don't look like digits; it is more like one digit "
                "fading out while the other fades in, and sometimes there are weird shapes in the middle. In the "
                "VAE the transition is smoother and the images in between look like real digits, e.g. the 1 "
                "slowly gets a loop on top and turns into a 9. I tried 2→7 and 4→6 with several samples and saw "
                "the same thing, although the VAE digits are a bit blurrier.\n"
                "2. The VAE latent space is more continuous and regular because the KL term pulls all codes "
                "towards $N(0, I)$ and fills the gaps. Similar images get similar codes, so a downstream model "
                "(e.g. a classifier trained on the codes) can learn simpler decision boundaries and generalizes "
                "better, and we can generate or edit images by moving in the latent space. The AE codes only make "
                "sense at the training points, so they are less useful for that, even if they keep more detail."
            ),
        },
    ),
    Submission(
        name="kl_sign_error.ipynb",
        defect="kl_divergence has the wrong sign (it is negative), so every beta > 0 rewards a large KL",
        best_beta="1.0",
        best_beta_line="Best-tune beta = 1",
        code_edits=(
            (SOLUTION_KL, "return 0.5 * torch.sum(1 + 2 * log_sigma - mu**2 - torch.exp(2 * log_sigma), dim=1)"),
        ),
        answers={
            "Q1": Answer(
                "**Answer: The reconstrucions are very good but the samples from the normal distribution look "
                "like noise / blobs, you can hardly recognize any digit. This is because the AE never learned what "
                "to do with random codes, it only maps the training images to some points in latent space and "
                "back. Those points are not distributed like N(0,I), so a random $z$ is most likely far away from "
                "any training code and the decoder produces garbage."
            ),
            "Q2": Answer(
                "**Answer: For $\\beta=0$ the reconstruction gets very good very quickly, similar to the AE. The "
                "KL loss is strange, it is negative and keeps going down, but since beta is zero it does not "
                "matter for the training. The samples are again not recognizable because nothing forces the "
                "latent distribution to be similar to the prior, it is basically an AE."
            ),
            "Q3": Answer(
                "**Answer: With $\\beta=10$ the training becomes unstable, the KL loss becomes a very large "
                "negative number and the reconstructions are much worse than before. The samples are bad too, "
                "mostly grey noise. I think $\\beta=10$ is just too high, so the KL term dominates the loss and "
                "the model cannot learn to reconstruct anymore. Maybe a smaller learning rate would help."
            ),
            "Q4": Answer(
                "**Answer: Reconstructions should look like the input images, maybe slightly blurry. Samples "
                "should be sharp and look like real handwritten digits of all classes, with variety and not all "
                "the same digit."
            ),
            "Q5": Answer(
                "Answer:\n\n"
                "- 1. The AE interpolation jumps between the digits and has some strange artifacts in between; "
                "the VAE one I could not really judge because my VAE images were mostly noise.\n"
                "- 2. In theory the VAE should have a smoother latent space, so it should be better for "
                "downstream tasks since similar inputs have similar codes. The AE latent space has holes, so a "
                "classifier on top could have problems with points in between."
            ),
        },
    ),
    Submission(
        name="reparam_no_noise.ipynb",
        defect="reparameterize returns mu (no noise), so the VAE is a deterministic autoencoder",
        best_beta="1.0",
        best_beta_line="**Best-tune beta = 1.0**",
        code_edits=((SOLUTION_REPARAM, "# z = mu + sigma * eps\n    return mu"),),
        answers={
            "Q1": Answer(
                "Answer: The decoded samples are mostly unreadable, they look like mixtures of several digits. "
                "The reconstructions on the other hand are nearly perfect. The reason is that the latent space of "
                "the autoencoder is not regularized, the encoder puts the codes wherever it wants. When we sample "
                "from N(0, I) we get points which are not close to the codes of real images, so the decoder has "
                "never seen such inputs.",
                layout="next",
            ),
            "Q2": Answer(
                "Answer: With $\\beta = 0$ there is no KL regularisation. The reconstructions are as good as for "
                "the AE and the KL divergence grows a lot during the training. Samples are still bad. A VAE "
                "without KL is the same as an AE, the posterior is not pushed to the prior so sampling from the "
                "prior does not work.",
                layout="next",
            ),
            "Q3": Answer(
                "Answer: With $\\beta=10$ the KL term is very small, but the reconstructions got worse and look "
                "blurrier than before. The samples look a bit more like digits than with $\\beta=0$ but they are "
                "blurry and less varied. The strong KL weight forces the codes to be close to 0, which removes "
                "information, so the decoder can not reconstruct the details anymore.",
                layout="next",
            ),
            "Q4": Answer(
                "**Answer**: Good reconstructions (the same digit as the input, reasonably sharp) and samples "
                "that are clear digits and diverse, covering all classes. The KL should not be zero, otherwise "
                "the latent code is not used at all.",
                layout="next",
            ),
            "Q5": Answer(
                "Answer:\n\n"
                "1. AE interpolations are less smooth, the middle images are often unclear overlays of the two "
                "digits. VAE interpolations change gradually from one digit to the other and the intermediate "
                "images look more like digits.\n"
                "2. A smoother latent space is better for downstream learning because nearby points have a "
                "similar meaning, e.g. for classification or for generating new data. The AE latent space has "
                "gaps, so it generalizes worse.",
                layout="next",
            ),
        },
    ),
    Submission(
        name="bad_beta.ipynb",
        defect="best_beta = 50: vae_tuned's KL collapses and its samples are one blurry average digit",
        best_beta="50.0",
        best_beta_line="Best-tune beta = 50",
        answers={
            "Q1": Answer(
                "Answer:\n\n"
                "- samples are blurry and most of them are not digits\n"
                "- the AE has no prior on the latent space, so the codes are not standard normal distributed\n"
                "- so sampling $z\\sim N(0,I)$ gives codes the decoder does not know"
            ),
            "Q2": Answer(
                "Answer:\n\n"
                "- rec. loss low, reconstructions look great\n"
                "- KL grows every epoch\n"
                "- samples bad, same as AE\n"
                "- reason: without the KL term it is just an autoencoder with a bit of noise, the encoder can "
                "make $\\sigma \\to 0$"
            ),
            "Q3": Answer(
                "Answer:\n\n"
                "- KL is almost 0\n"
                "- reconstructions all look the same, blurry\n"
                "- samples look like digits but are all very similar\n"
                "- the KL term is strong so the encoder outputs the prior ($\\mu=0, \\sigma=1$)"
            ),
            "Q4": Answer(
                "Answer:\n\n"
                "- reconstructions: should look like the input\n"
                "- samples: should look like digits and not be noisy\n"
                "- I picked a large beta because there the samples were the cleanest (no noisy pixels at all)"
            ),
            "Q5": Answer(
                "Answer:\n\n"
                "1. AE: transition is abrupt, weird shapes in the middle. VAE: very smooth, but all the digits "
                "look similar\n"
                "2. smoother latent space is better for downstream tasks (classification, clustering), the AE "
                "space has holes"
            ),
        },
    ),
    Submission(
        name="vae_cell_raises.ipynb",
        defect="the VAE cell raises (forward decodes the 2*NZ encoder output), so no vae_* model exists",
        best_beta="2.0",
        best_beta_line="Best-tune beta = 2",
        code_edits=(
            (
                SOLUTION_VAE_FORWARD,
                """    def forward(self, x):
        h = self.encoder(x)
        mu, log_sigma = h.chunk(2, dim=1)
        z = reparameterize(mu, log_sigma)
        return self.decode(h), mu, log_sigma


# quick check that the shapes work
x_hat, mu, log_sigma = VAE(NZ)(train_images[:8])
print(x_hat.shape, mu.shape, log_sigma.shape)""",
            ),
        ),
        answers={
            "Q1": Answer(
                "**Answer**: The AE reconstructs the test digits well, but the samples are not really digits, "
                "more like noisy blobs. The AE was only trained to reconstruct, so its latent space is not "
                "organized like a normal distribution and random samples land in areas without training data."
            ),
            "Q2": Answer(
                "**Answer**: My VAE training did not run (a shape error I could not fix in time). I would expect "
                "that with $\\beta=0$ the VAE behaves like a normal autoencoder: very good reconstructions, a "
                "large KL, and bad samples because the latent space is not regularized."
            ),
            "Q3": Answer(
                "**Answer**: Expected: with $\\beta=10$ the KL term dominates, the posterior collapses to the "
                "prior and reconstructions and samples become blurry average digits."
            ),
            "Q4": Answer(
                "**Answer**: Reconstructions should be close to the inputs; samples should be realistic and "
                "varied digits from all classes."
            ),
            "Q5": Answer(
                "**Answer**: I only got the AE interpolation: the images in the middle are blurry overlaps of "
                "the 1 and the 9 and not real digits. For the VAE I expect smoother transitions because the KL "
                "term makes the latent space continuous, which should make it more useful for downstream tasks "
                "like classification."
            ),
        },
    ),
    Submission(
        name="answers_incomplete.ipynb",
        defect="Q3 and Q5 unanswered; the Q1 answer is far over its 150-word limit",
        best_beta="1.0",
        best_beta_line="Best tuned beta: 1.0",
        answers={
            "Q1": Answer(
                "**Answer:** First of all, the reconstructions of the autoencoder are really good, almost "
                "indistinguishable from the original test images, which shows that the encoder and the decoder "
                "learned a good compression of the digits into only 16 numbers. However, when we decode random "
                "vectors sampled from a standard normal distribution, the results are very different: most of the "
                "samples do not look like digits at all. Some of them look like blurry blobs, some look like "
                "several digits drawn on top of each other, and only a few of them could maybe be recognized as "
                "a 0, a 3 or an 8 if you look very closely. I think there are several reasons for this. The "
                "first reason is that the autoencoder is trained only with the reconstruction loss, so there is "
                "nothing in the objective that tells the encoder where in the latent space it should put the "
                "codes. The codes can therefore have any mean and any scale, and different dimensions can have "
                "very different ranges. The second reason is that the codes of the training images do not fill "
                "the latent space; they form clusters with large empty regions in between, and the decoder was "
                "never trained on points in these empty regions, so it can output anything there. The third "
                "reason is that a standard normal distribution in 16 dimensions puts most of its mass on a thin "
                "shell at radius about 4, which is probably not where the codes of the autoencoder are. Because "
                "of all of these reasons, sampling from the prior mostly gives codes that the decoder does not "
                "know, and therefore the generated images are not good. I would expect this to get even worse "
                "with more training epochs, because the codes spread out further."
            ),
            "Q2": Answer(
                "**Answer:** The reconstructions are as good as the AE's, while the KL divergence grows "
                "during training because it is not part of the loss. Samples from $N(0, I)$ are as bad as the AE "
                "samples. With $\\beta=0$ the VAE is an autoencoder with noise: the encoder shrinks $\\sigma$ and "
                "spreads $\\mu$ so that the noise does not matter, and the codes are not pulled towards the prior."
            ),
            "Q4": Answer(
                "**Answer:** Reconstructions: recognizably the input digit with its style, possibly a bit "
                "blurrier than the AE. Samples: realistic digits that are clearly one class, and diverse, i.e. "
                "all classes and many writing styles appear."
            ),
        },
    ),
]


def _question_text(source: str) -> str:
    """The question cell without its answer label and whatever follows it."""
    return ANSWER_LABEL.split(source, maxsplit=1)[0].rstrip()


def _question_id(source: str, config: AssignmentConfig) -> str | None:
    for question in config.questions:
        if re.search(question.match, source):
            return question.id
    return None


def _replace_once(source: str, old: str, new: str, where: str) -> str:
    if source.count(old) != 1:
        raise ValueError(f"{where}: expected the solution text exactly once: {old[:60]!r}")
    return source.replace(old, new)


def build(solution: NotebookNode, submission: Submission, config: AssignmentConfig) -> NotebookNode:
    """The student's notebook, before it is run: solution code with their edits and their answers."""
    nb = solution_code(solution)
    pending = list(submission.code_edits) + [("best_beta = 1.0", f"best_beta = {submission.best_beta}")]
    cells: list[NotebookNode] = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            for old, new in list(pending):
                if old in cell.source:
                    cell.source = _replace_once(cell.source, old, new, submission.name)
                    pending.remove((old, new))
            cells.append(cell)
            continue
        if re.search(config.contract.best_beta_pattern, cell.source):
            if submission.best_beta_line is not None:
                cell.source = submission.best_beta_line
                cells.append(cell)
            continue
        question = _question_id(cell.source, config)
        answer = submission.answers.get(question) if question else None
        if question and answer is None:
            cell.source = _question_text(cell.source) + "\n\n**Answer:**"
        elif answer is not None and answer.layout == "same":
            cell.source = _question_text(cell.source) + "\n\n" + answer.text
        elif answer is not None:
            cell.source = _question_text(cell.source)
            if answer.layout == "split":
                cell.source += "\n\n**Answer:**"
            cells.append(cell)
            cell = new_markdown_cell(answer.text)
            cell.id = f"{cells[-1].id}-answer"
        cells.append(cell)
    if pending:
        raise ValueError(f"{submission.name}: edits not applied: {[old[:60] for old, _ in pending]}")
    nb.cells = cells
    return nb


def _mnist_workdir(root: Path) -> Path:
    """A fresh working folder whose data/MNIST/raw links to the cached MNIST files."""
    source = default_data_dir() / "MNIST" / "raw"
    files = sorted(source.glob("*-ubyte"))
    if len(files) < 4:
        raise DataError(f"{source}: expected the four MNIST idx files (run the grader once to fetch them)")
    raw = root / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for file in files:
        (raw / file.name).symlink_to(file)
    return root


def execute(nb: NotebookNode, parameters: dict, config: AssignmentConfig) -> NotebookNode:
    """nb run in a fresh folder with `parameters` injected; the injected cell is gone again."""
    with tempfile.TemporaryDirectory(prefix="submission-") as tmp:
        workdir = _mnist_workdir(Path(tmp))
        run = inject_parameters(nb, parameters | {"DATA_DIR": str(workdir / "data")}, config.parameters.tag)
        NotebookClient(
            run,
            timeout=config.limits.cell_timeout_s,
            kernel_name="python3",
            allow_errors=True,
            record_timing=False,
            resources={"metadata": {"path": str(workdir)}},
        ).execute()
    run.cells = [cell for cell in run.cells if not is_injected(cell)]
    return run


def _errors(nb: NotebookNode) -> list[str]:
    return [
        f"{out.ename}: {out.evalue}"
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="submissions to rebuild (default: all)")
    parser.add_argument("--config", type=Path, default=None, help="assignment config (default: the shipped one)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    known = {s.name: s for s in SUBMISSIONS}
    unknown = [name for name in args.names if name not in known]
    if unknown:
        parser.error(f"unknown submission(s) {unknown}; known: {sorted(known)}")
    # One thread per kernel: on a small shared machine several BLAS threads mostly wait on each other.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    solution = nbformat.read(config.path(config.assignment.solution), as_version=4)
    parameters = dict(config.parameters.presets[PRESET])
    SUBMISSIONS_DIR.mkdir(exist_ok=True)
    for submission in (known[name] for name in args.names or known):
        started = time.perf_counter()
        nb = execute(build(solution, submission, config), parameters, config)
        path = SUBMISSIONS_DIR / submission.name
        write_notebook(nb, path)
        errors = _errors(nb)
        print(
            f"{submission.name}: {path.stat().st_size / 1024:.0f} KiB, {time.perf_counter() - started:.0f} s, "
            f"{len(errors)} error output(s){': ' + '; '.join(errors) if errors else ''}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
