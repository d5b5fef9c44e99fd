"""Answer extraction: the seed's real formats, their variations, and the word count.

Expected texts and word counts below were worked out by hand from the cell text, not by the code.
"""

from __future__ import annotations

import pytest
from nbformat import v4

from grader.answers import count_words, extract_answers, find_best_beta_in_markdown
from grader.config import Question, load_config
from grader.errors import ConfigError
from grader.paths import REFERENCE_DIR

CONFIG = load_config()


def md(text: str):
    return v4.new_markdown_cell(text)


def code(text: str = "x = 1"):
    return v4.new_code_cell(text)


def notebook(*cells):
    return v4.new_notebook(cells=list(cells))


def by_id(answers):
    return {a.id: a for a in answers}


def one_question_config(limit: int = 150, points: float = 2):
    q = Question(id="Q1", part="1 AE", match="Describe your observations", points=points, limit=limit)
    return CONFIG.model_copy(update={"questions": [q]})


Q1_CELL = (
    "Inline Question: Describe your observations, why do you think they occur? [2pt] "
    "(please limit your answer to <150 words)"
)


def q1_answer(*after_question, question: str = Q1_CELL):
    """A one-question notebook: the question cell then `after_question`, then code."""
    nb = notebook(code("import torch"), md(question), *after_question, code("train()"))
    return extract_answers(nb, one_question_config())[0]


# ---------------------------------------------------------------------------------------------
# The seed (shared/seeds/000_02220cb3fc9b108b.txt), transcribed into cells. The text file does not
# show cell boundaries; lines holding one space are taken as empty code cells, the stripped code as
# real code cells, and the rest split as the brief describes: Q1's answer in its question's cell,
# Q2's limit line in a cell of its own, "Let's repeat ..." and Q3's question in Q2's answer cell.

SEED_Q1 = (
    "An interesting fact is when I increased the number of epoch, the images become more and more similar and "
    "hard to recognize or even unrecognizable. When the number of epoch is 10, you can tell nothing from the "
    "output image. I guess it's due to the limitation of prior distribution, overfitting and the points "
    "distribute are more closed when the reconstruction loss gets smaller, thus generative model will unlikely "
    "to generates point close to these points."
)
SEED_Q2 = (
    "When $\\beta=0$, though the reconstruction loss gets really small very quickly, KL loss quickly increases. "
    "Our reconstruction result is almost perfect because our reconstruction loss really small. But the sampling "
    "result is unrecognizable, mainly because KL divergence tells us how well the probability distribution Q "
    "approximates the probability distribution P, if we set beta too low, KL is unconstrained, and distribution "
    "Q will not approximate P and thus our image cannot be good."
)
SEED_REPEAT = (
    "Let's repeat the same experiment for $\\beta=10$, a very high value for the coefficient. You can modify the "
    "β value in the cell above and rerun it (it is okay to overwrite the outputs of the previous experiment, but "
    "**make sure to copy the visualizations of training curves, reconstructions and samples for \\beta=0 into "
    "your solution PDF before deleting them).**"
)
SEED_Q3 = (
    "Once we make $\\beta=10$, both our reconstruction loss and kl loss decrease very quickly. The difference "
    "between reconstruction loss comparing to $\\beta=0$ is our reconstruction loss has a higher variance after "
    "reconstruction loss is below 0.05. Our reconstruction image is almost perfect and our sampling result is "
    "much better, we can recognize most of them with high probability. The main reason is our reconstruction "
    "and kl loss are both really low."
)
SEED_TUNING = (
    'Now we can start tuning the beta value to achieve a good result. First describe what a "good result" would '
    "look like (focus what you would expect for reconstructions and sample quality)."
)
SEED_Q4 = (
    'I think a "good reasult" should have a sampling result that is easily recognizable with high confidence '
    "and without too much blurred and a perfect reconstruction result."
)
SEED_Q5 = (
    "- 1. Some digits in AE feel like they are seperated by some cuts and some digits in VAE contains are kind "
    "of blurred.\n"
    "- Since VAE has KL divergence loss, it has better proximate distribution. That's why digits in AE may seems "
    "seperated by some cuts and digits in VAE are more like a real digits. However, VAE will have some higher "
    "variance for reconstruction loss, which explains the blurredness in the VAE images."
)
# Counted by hand, sentence by sentence: 25+15+36, 15+12+46, 14+22+22+13, 27, 22+11+21+18.
SEED_WORDS = {"Q1": 76, "Q2": 73, "Q3": 71, "Q4": 27, "Q5": 72}
SEED_TEXTS = {"Q1": SEED_Q1, "Q2": SEED_Q2, "Q3": SEED_Q3, "Q4": SEED_Q4, "Q5": SEED_Q5}


def seed_notebook():
    return notebook(
        code("import torch"),
        code(" "),
        md(Q1_CELL + "\n\n**Answer: " + SEED_Q1),
        code(" "),
        code("ae = train_ae()"),
        code("best_beta = 6.77"),
        md("Best-tune beta = 6.77"),
        code("vae_beta0 = train_vae(beta=0)"),
        md("Inline Question: What can you observe when setting $\\beta=0$? Explain your observations! [3pt]"),
        md("(please limit your answer to <150 words)"),
        md(
            "**Answer: " + SEED_Q2 + "\n\n" + SEED_REPEAT + "\n\n"
            "Inline Question: What can you observe when setting $\\beta=10$? Explain your observations! [3pt]"
        ),
        md("(please limit your answer to <200 words)"),
        code(" "),
        md("Answer: " + SEED_Q3),
        code(" "),
        md(SEED_TUNING),
        code(" "),
        md(
            "Inline Question: Characterize what properties you would expect for reconstructions (1pt) and "
            "samples (2pt) of a well-tuned VAE! [3pt]\n\n(please limit your answer to <200 words)\n\n"
            "Answer: " + SEED_Q4
        ),
        code("vae_tuned = train_vae(best_beta)"),
        code("interpolate()"),
        md(
            "Inline Question: Repeat the interpolation experiment with different start / end labels and multiple "
            "samples. Describe your observations! Focus on:\n\n"
            "- 1. How do AE and VAE embedding space interpolations differ?\n"
            "- 2. How do you expect these differences to affect the usefulness of the learned representation for "
            "downstream learning? (please limit your answer to <300 words)"
        ),
        md("Answer:\n\n" + SEED_Q5),
    )


# The project's handout text around the same questions (reference/handout.ipynb): as templates go,
# an older sibling of the seed's, so its instructions are near copies, not exact ones.
def seed_handout():
    label = "\n\n**Answer:**"
    return notebook(
        md("# Autoencoders\n\nFill in every `# YOUR CODE HERE` and answer each **Inline Question**."),
        md("**Inline Question:** Describe your observations, why do you think they occur? [2pt] "
           "(please limit your answer to <150 words)" + label),
        md("**Inline Question:** What can you observe when setting $\\beta=0$? Explain your observations! [3pt]"
           "\n\n(please limit your answer to <150 words)" + label),
        md("### $\\beta = 10$\n\nLet's repeat the same experiment for $\\beta=10$, a very high value for the "
           "coefficient."),
        code("vae_beta10 = train(10)"),
        md("**Inline Question:** What can you observe when setting $\\beta=10$? Explain your observations! [3pt]"
           "\n\n(please limit your answer to <200 words)" + label),
        md("## Part 3: Tuning $\\beta$\n\nNow we can start tuning the $\\beta$ value to achieve a good result. "
           'First describe what a "good result" would look like\n(focus on what you would expect for '
           "reconstructions and sample quality)."),
        md("**Inline Question:** Characterize what properties you would expect for reconstructions (1pt) and "
           "samples (2pt) of a well-tuned VAE! [3pt]\n\n(please limit your answer to <200 words)" + label),
    )


@pytest.mark.parametrize("template", [None, "handout"])
def test_seed_answers_are_extracted_exactly(template):
    answers = extract_answers(seed_notebook(), CONFIG, template=seed_handout() if template else None)
    assert [a.id for a in answers] == ["Q1", "Q2", "Q3", "Q4", "Q5"]
    for a in answers:
        assert a.found, a
        assert a.text == SEED_TEXTS[a.id]
        assert a.words == SEED_WORDS[a.id]
        assert not a.over_limit
    got = by_id(answers)
    assert (got["Q1"].limit, got["Q1"].max_points, got["Q5"].max_points) == (150, 2, 4)
    # Nothing to say about Q1, Q4, Q5 ([Npt] and limits agree with the config; Q5 states no points).
    assert (got["Q1"].note, got["Q4"].note, got["Q5"].note) == ("", "", "")
    # The handout's instructions after Q2 and Q3 were left out, and the note says so.
    assert "Let's repeat the same experiment" in got["Q2"].note
    assert "Now we can start tuning" in got["Q3"].note
    assert ("near copies of the handout" if template else "a guess") in got["Q2"].note


def test_seed_best_beta_line_belongs_to_no_answer_and_is_found():
    answers = extract_answers(seed_notebook(), CONFIG)
    assert all("6.77" not in a.text for a in answers)
    assert find_best_beta_in_markdown(seed_notebook(), CONFIG.contract.best_beta_pattern) == 6.77


def test_seed_in_one_long_cell_is_split_at_each_question():
    # The odd split taken to the extreme: Q2, the instructions, Q3, more instructions and Q4 in one cell.
    one_cell = (
        "Inline Question: What can you observe when setting $\\beta=0$? Explain your observations! [3pt]\n\n"
        "(please limit your answer to <150 words)\n\n**Answer: " + SEED_Q2 + "\n\n" + SEED_REPEAT + "\n\n"
        "Inline Question: What can you observe when setting $\\beta=10$? Explain your observations! [3pt]\n\n"
        "(please limit your answer to <200 words)\n\n \nAnswer: " + SEED_Q3 + "\n\n \n" + SEED_TUNING + "\n\n \n"
        "Inline Question: Characterize what properties you would expect for reconstructions (1pt) and samples "
        "(2pt) of a well-tuned VAE! [3pt]\n\n(please limit your answer to <200 words)\n\nAnswer: " + SEED_Q4
    )
    got = by_id(extract_answers(notebook(md(one_cell), code()), CONFIG))
    assert [got[q].text for q in ("Q2", "Q3", "Q4")] == [SEED_Q2, SEED_Q3, SEED_Q4]
    assert not got["Q1"].found and got["Q1"].note.startswith("question not found in the notebook")


def test_windows_line_endings_give_the_same_answers():
    nb = seed_notebook()
    for cell in nb.cells:
        cell.source = cell.source.replace("\n", "\r\n")
    answers = extract_answers(nb, CONFIG)
    assert [(a.text, a.words) for a in answers] == [(SEED_TEXTS[q], SEED_WORDS[q]) for q in SEED_TEXTS]


# ---------------------------------------------------------------------------------------------
# Answer labels

LABELLED = [
    "**Answer:** The samples are blurry.",
    "**Answer: The samples are blurry.",
    "**Answer: The samples are blurry.**",
    "**Answer**: The samples are blurry.",
    "Answer: The samples are blurry.",
    "answer: The samples are blurry.",
    "ANSWER - The samples are blurry.",
    "__Answer__: The samples are blurry.",
    "*Answer*: The samples are blurry.",
    "_Answer:_ The samples are blurry.",
    "Your answer: The samples are blurry.",
    "<b>Answer:</b> The samples are blurry.",
    "### Answer\n\nThe samples are blurry.",
    "**Answer**\nThe samples are blurry.",
    "> **Answer:** The samples are blurry.",
    "- Answer: The samples are blurry.",
]


@pytest.mark.parametrize("cell", LABELLED)
def test_every_label_style_in_the_question_cell(cell):
    a = q1_answer(question=Q1_CELL + "\n\n" + cell)
    assert (a.found, a.text, a.words, a.note) == (True, "The samples are blurry.", 4, "")


@pytest.mark.parametrize("cell", LABELLED)
def test_every_label_style_in_the_next_cell(cell):
    a = q1_answer(md(cell))
    assert (a.found, a.text, a.words) == (True, "The samples are blurry.", 4)


def test_label_in_mid_line_after_the_question():
    a = q1_answer(question=Q1_CELL + " **Answer:** The samples are blurry.")
    assert a.text == "The samples are blurry."


def test_bare_label_after_the_limit_on_the_same_line():
    a = q1_answer(question=Q1_CELL + " Answer: The samples are blurry.")
    assert (a.text, a.note) == ("The samples are blurry.", "")


def test_empty_label_then_the_answer_in_the_next_cell():
    a = q1_answer(md("**Answer:**"), md("The samples are blurry.\n\nThey look like averages."))
    assert a.text == "The samples are blurry.\n\nThey look like averages."
    assert a.words == 8


def test_answer_split_over_two_cells_is_joined_with_a_blank_line():
    a = q1_answer(md("**Answer:** The samples are blurry."), md("Training longer makes it worse."))
    assert a.text == "The samples are blurry.\n\nTraining longer makes it worse."
    assert a.words == 9


def test_list_answer_keeps_its_markdown_and_bullets_are_not_words():
    a = q1_answer(md("Answer:\n\n1. Blurry samples, $z \\sim \\mathcal{N}(0, I)$.\n2. **No** digits.\n   - none"))
    assert a.text == "1. Blurry samples, $z \\sim \\mathcal{N}(0, I)$.\n2. **No** digits.\n   - none"
    assert a.words == 6      # Blurry samples $...$ No digits none


def test_later_answer_labels_inside_the_answer_are_the_students_text():
    a = q1_answer(md("**Answer:** The short answer: no digits.\n\nAnswer: see the plot above."))
    assert a.text == "The short answer: no digits.\n\nAnswer: see the plot above."
    assert a.words == 10


def test_handout_placeholder_then_the_students_own_label():
    a = q1_answer(md("**Answer:** *Your answer here*\n\nAnswer: The samples are blurry."))
    assert a.text == "The samples are blurry."


def test_prose_starting_with_answer_is_not_a_label():
    a = q1_answer(md("Answers vary, but mine: the samples are blurry."))
    assert a.found and a.text == "Answers vary, but mine: the samples are blurry."
    assert a.note.startswith("no “Answer:” label")


# ---------------------------------------------------------------------------------------------
# Missing and empty answers, and what ends an answer


def test_empty_label_is_an_empty_answer():
    a = q1_answer(question=Q1_CELL + "\n\n**Answer:**")
    assert (a.found, a.text, a.words, a.note) == (False, "", 0, "answer is empty")


def test_only_the_placeholder_is_an_empty_answer():
    a = q1_answer(question=Q1_CELL + "\n\n**Answer:** *Your answer here*")
    assert (a.found, a.note) == (False, "answer is empty")


def test_no_label_and_no_text_is_no_answer():
    a = q1_answer()
    assert (a.found, a.note) == (False, "question found but no answer after it")


def test_question_missing_entirely():
    nb = notebook(md("# Autoencoders"), code(), md("Some notes of mine."), code())
    a = extract_answers(nb, one_question_config())[0]
    assert not a.found
    assert a.note == "question not found in the notebook: no Inline Question matches /Describe your observations/"
    assert (a.limit, a.max_points) == (150, 2)


def test_code_cell_ends_the_answer():
    nb = notebook(md(Q1_CELL + "\n\n**Answer:** The samples are blurry."), code("plot()"), md("My own notes."))
    assert extract_answers(nb, one_question_config())[0].text == "The samples are blurry."


def test_empty_code_cell_does_not_end_the_answer():
    a = q1_answer(md("**Answer:** The samples are blurry."), code("   \n"), md("Training makes it worse."))
    assert a.text == "The samples are blurry.\n\nTraining makes it worse."


def test_answer_in_a_raw_cell_counts():
    a = q1_answer(v4.new_raw_cell("Answer: The samples are blurry."))
    assert a.text == "The samples are blurry."


def test_label_after_a_plot_is_found_with_a_note():
    nb = notebook(md(Q1_CELL), code("plot()"), md("**Answer:** The samples are blurry."), code())
    a = extract_answers(nb, one_question_config())[0]
    assert a.found and a.text == "The samples are blurry."
    assert a.note == "the answer is after a code cell, in cell 2"


def test_unlabelled_text_after_the_question_is_taken_with_a_note():
    a = q1_answer(question=Q1_CELL + "\n\nThe samples are blurry.")
    assert a.found and a.text == "The samples are blurry."
    assert a.note.startswith("no “Answer:” label after the question")


def test_limit_line_in_its_own_cell_is_not_an_unlabelled_answer():
    question = "Inline Question: Describe your observations, why do you think they occur? [2pt]"
    a = q1_answer(md("(please limit your answer to <150 words)"), question=question)
    assert (a.found, a.note) == (False, "question found but no answer after it")


def test_unrelated_markdown_elsewhere_is_not_attributed():
    nb = notebook(
        md("# Title\n\nAnswer: this is the course intro, not an answer."), code(),
        md(Q1_CELL + "\n\n**Answer:** The samples are blurry."), code(), md("Notes: I used 3 epochs."),
    )
    assert extract_answers(nb, one_question_config())[0].text == "The samples are blurry."


# ---------------------------------------------------------------------------------------------
# The handout's text after an answer


def test_instructions_cut_without_template_but_kept_when_the_template_lacks_them():
    answer = "**Answer:** The samples are blurry.\n\nLet's look at the KL term: it grows."
    heuristic = q1_answer(md(answer))
    assert heuristic.text == "The samples are blurry."
    assert "left out a paragraph as the handout's instructions" in heuristic.note
    nb = notebook(md(Q1_CELL), md(answer), code())
    templated = extract_answers(nb, one_question_config(), template=notebook(md(Q1_CELL + "\n\n**Answer:**")))[0]
    assert templated.text == "The samples are blurry.\n\nLet's look at the KL term: it grows."
    assert templated.note == ""


def test_template_removes_instructions_no_heuristic_would_catch():
    instructions = "The cell below plots ten samples from the prior for each model."
    nb = notebook(md(Q1_CELL), md("**Answer:** The samples are blurry."), md(instructions), code())
    template = notebook(md(Q1_CELL + "\n\n**Answer:**"), md(instructions), code())
    assert q1_answer(md("**Answer:** The samples are blurry."), md(instructions)).words == 16
    a = extract_answers(nb, one_question_config(), template=template)[0]
    assert (a.text, a.words, a.note) == ("The samples are blurry.", 4, "")   # an exact copy: no note


def test_part_of_a_handout_paragraph_is_the_handouts():
    # The student split the handout's instructions in two; each half is inside a handout paragraph.
    first = "Try a few values of beta between 0 and 10 and compare the samples."
    second = "Also write the value you chose in the markdown cell below."
    nb = notebook(md(Q1_CELL), md("**Answer:** Blurry."), md(first + "\n\n" + second), code())
    template = notebook(md(Q1_CELL + "\n\n**Answer:**"), md(first + "\n" + second), code())
    a = extract_answers(nb, one_question_config(), template=template)[0]
    assert (a.text, a.note) == ("Blurry.", "")


def test_heading_before_instructions_goes_with_them():
    a = q1_answer(md("**Answer:** The samples are blurry."), md("### $\\beta = 10$\n\nLet's repeat it for 10."))
    assert a.text == "The samples are blurry."


def test_students_own_subheading_is_kept():
    a = q1_answer(md("**Answer:**\n\n### Samples\n\nThey are blurry."))
    assert a.text == "### Samples\n\nThey are blurry."
    assert a.words == 4


# ---------------------------------------------------------------------------------------------
# Identifying questions, points and limits


def reworded_notebook():
    return notebook(
        md("Inline Question: Describe your observations, why do you think they occur? [2pt]\n\nAnswer: AE."),
        md("Inline Question: What did you see with no KL term at all? [3pt]\n\nAnswer: Sharp, bad samples."),
        md("Inline Question: What can you observe when setting $\\beta=10$? [3pt]\n\nAnswer: Collapse."),
    )


def test_reworded_question_falls_back_to_notebook_order():
    got = by_id(extract_answers(reworded_notebook(), CONFIG))
    assert got["Q2"].found and got["Q2"].text == "Sharp, bad samples."
    assert got["Q2"].note.startswith("identified by its position (Inline Question 2 of 3, cell 1)")
    assert (got["Q1"].text, got["Q3"].text) == ("AE.", "Collapse.")
    assert (got["Q1"].note, got["Q3"].note) == ("", "")
    for q in ("Q4", "Q5"):   # nothing left in order for them
        assert not got[q].found and got[q].note.startswith("question not found in the notebook")


def test_fallback_never_takes_a_question_out_of_order():
    # Q2 reworded, but the only unmatched Inline Question comes after Q3: not Q2's. Nor is it
    # handed to Q4 or Q5: one spare question for two config questions would be a guess.
    nb = reworded_notebook()
    nb.cells = [nb.cells[0], nb.cells[2], nb.cells[1]]
    got = by_id(extract_answers(nb, CONFIG))
    for q in ("Q2", "Q4", "Q5"):
        assert not got[q].found
        assert got[q].note.endswith("(Inline Questions matched to no config question: cells 2)")


def test_fallback_pairs_a_run_of_reworded_questions_in_order():
    nb = notebook(
        md("Inline Question: Describe your observations, why do you think they occur?\n\nAnswer: one"),
        md("Inline Question: reworded A\n\nAnswer: two"),
        md("Inline Question: reworded B\n\nAnswer: three"),
        md("Inline Question: reworded C\n\nAnswer: four"),
        md("Inline Question: Repeat the interpolation experiment ...\n\nAnswer: five"),
    )
    answers = extract_answers(nb, CONFIG)
    assert [a.text for a in answers] == ["one", "two", "three", "four", "five"]
    assert [a.note.startswith("identified by its position") for a in answers] == [False, True, True, True, False]


def test_duplicated_question_uses_the_answered_copy():
    nb = notebook(md(Q1_CELL + "\n\n**Answer:**"), code(), md(Q1_CELL + "\n\nAnswer: Blurry."), code())
    a = extract_answers(nb, one_question_config())[0]
    assert a.text == "Blurry."
    assert a.note == "the question appears 2 times (cells 0, 2); the one in cell 2 is used"


def test_points_and_limit_disagreeing_with_the_config_are_noted_and_the_config_wins():
    question = ("Inline Question: Describe your observations, why do you think they occur? [5pt] "
                "(please limit your answer to <3 words)")
    a = q1_answer(md("Answer: The samples are blurry."), question=question)
    assert (a.words, a.limit, a.max_points, a.over_limit) == (4, 150, 2, False)
    assert a.note == ("the notebook says [5pt] but the config gives 2 points; the config's are used; "
                      "the notebook says <3 words but the config's limit is 150; the config's is used")


def test_over_limit_answer():
    words = " ".join(f"w{i}" for i in range(151))
    a = q1_answer(md("Answer: " + words))
    assert (a.words, a.over_limit) == (151, True)
    at_limit = q1_answer(md("Answer: " + " ".join(f"w{i}" for i in range(150))))
    assert (at_limit.words, at_limit.over_limit) == (150, False)


def test_bold_question_heading_like_the_handouts():
    a = q1_answer(md("**Answer:** Blurry."), question="**Inline Question 1:** " + Q1_CELL[len("Inline Question: "):])
    assert (a.found, a.text) == (True, "Blurry.")


# ---------------------------------------------------------------------------------------------
# The project's own handout and solution, once they exist


@pytest.mark.skipif(not (REFERENCE_DIR / "handout.ipynb").exists(), reason="reference/handout.ipynb not written yet")
def test_project_handout_has_no_answers_and_solution_answers_all():
    import nbformat

    handout = nbformat.read(REFERENCE_DIR / "handout.ipynb", as_version=4)
    for template in (None, handout):
        assert [(a.found, a.note.split(";")[0]) for a in extract_answers(handout, CONFIG, template=template)] == [
            (False, "answer is empty")] * len(CONFIG.questions)
    solution_path = REFERENCE_DIR / "solution.ipynb"
    if solution_path.exists():
        solution = nbformat.read(solution_path, as_version=4)
        for a in extract_answers(solution, CONFIG, template=handout):
            assert a.found and not a.over_limit and a.note == "", a
            assert not a.text.startswith(("**", "Answer")) and "Part " not in a.text


# ---------------------------------------------------------------------------------------------
# best_beta in markdown, and the word count


def test_best_beta_last_markdown_match_wins_and_code_is_ignored():
    pattern = CONFIG.contract.best_beta_pattern
    nb = notebook(md("best beta: 2"), code("# Best-tune beta = 9"), md("Best-tune beta = 6.77\n\nNotes."))
    assert find_best_beta_in_markdown(nb, pattern) == 6.77
    assert find_best_beta_in_markdown(notebook(md("Best-tune beta = ?"), code()), pattern) is None
    assert find_best_beta_in_markdown(notebook(md("Best beta = 2.5e-1")), pattern) == 0.25


def test_best_beta_bad_pattern_is_a_clear_error():
    with pytest.raises(ConfigError, match="best_beta_pattern"):
        find_best_beta_in_markdown(notebook(), "best (beta")


@pytest.mark.parametrize(
    "text, words",
    [
        ("$\\beta=0$", 1),
        ("When $\\beta = 0$, the KL grows.", 5),
        ("- 1. Some digits", 2),
        ("**bold** and *em*", 3),
        ("**Answer: dangling bold", 3),
        ("[link text](http://example.com/a-b)", 2),
        ("![a figure](attachment:image.png)", 0),
        ("$$\n\\sum_i x_i\n$$", 1),
        ("a — b -> c", 3),
        ("well-tuned AE/VAE it's", 3),
        ("`code span` here", 3),
        ("Line one\r\nline two", 4),
        ("| a | b |\n|---|---|\n| c d | e |", 5),
        ("", 0),
    ],
)
def test_count_words(text, words):
    assert count_words(text) == words


# ---------------------------------------------------------------------------------------------
# Answer cells tagged in the handout ({"grader": {"answer": "Q1"}}), and the text rules without them

KEY = CONFIG.assignment.answer_cell_key


def tagged(cell, question_id="Q1", key=KEY):
    cell.metadata[key] = {"answer": question_id}
    return cell


ODD_TEXT = "My thoughts: the decoded prior draws are blurry blobs, since nothing pulls the codes towards N(0, I)."


def test_the_tagged_cell_is_the_answer_whatever_its_text():
    # no "Inline Question" heading, no label, nothing the question's pattern matches
    nb = notebook(code("import torch"), tagged(md(ODD_TEXT)), code("train()"))
    answer = extract_answers(nb, one_question_config())[0]
    assert answer.found and answer.text == ODD_TEXT and answer.words == 17
    assert "identified by its cell's tag (cell 1)" in answer.note
    assert "no “Answer:” label" in answer.note


def test_without_the_tag_the_same_cell_is_not_an_answer():
    answer = extract_answers(notebook(code("import torch"), md(ODD_TEXT), code("train()")), one_question_config())[0]
    assert not answer.found and answer.note.startswith("question not found in the notebook")


def test_a_tagged_cell_with_a_reworded_question_reads_after_its_label():
    cell = tagged(md("**Q1 (my words):** what do the AE samples look like? [2pt]\n\n**Answer:** Blurry digits."))
    answer = extract_answers(notebook(code("import torch"), cell, code("train()")), one_question_config())[0]
    assert answer.found and answer.text == "Blurry digits." and answer.words == 2
    assert "identified by its cell's tag" in answer.note


def test_a_tagged_cell_without_a_label_drops_the_statement_up_to_the_limit_line():
    cell = tagged(md(Q1_CELL + "\n\nThey are blurry."))
    answer = extract_answers(notebook(code("import torch"), cell, code("train()")), one_question_config())[0]
    assert answer.found and answer.text == "They are blurry."
    assert "identified by its cell's tag" not in answer.note     # its text matches: nothing to say


def test_an_untagged_notebook_falls_back_to_the_text_rules():
    # the same answers as the seed's tests: every label style, found by pattern and position
    plain = extract_answers(seed_notebook(), CONFIG)
    assert {a.id: a.text for a in plain} == SEED_TEXTS
    # and tags on its question cells change none of them
    nb = seed_notebook()
    for index, question_id in ((2, "Q1"), (8, "Q2"), (17, "Q4"), (20, "Q5")):
        tagged(nb.cells[index], question_id)
    assert [(a.id, a.text, a.words) for a in extract_answers(nb, CONFIG)] == [(a.id, a.text, a.words) for a in plain]


def test_the_tag_wins_over_the_pattern_and_over_another_questions_pattern():
    # the cell tagged Q1 quotes Q2's question; the untagged Q1 copy is a decoy the student left empty
    q2 = Question(id="Q2", part="2", match="setting \\$\\\\beta\\s*=\\s*0\\$", points=3, limit=150)
    config = one_question_config().model_copy(update={"questions": [*one_question_config().questions, q2]})
    cells = [md(Q1_CELL + "\n\n**Answer:**"),
             tagged(md("Inline Question: What can you observe when setting $\\beta=0$?\n\n**Answer:** Q1 text.")),
             code("x = 1"),
             md("Inline Question: What can you observe when setting $\\beta=0$? [3pt]\n\n**Answer:** Q2 text.")]
    answers = by_id(extract_answers(notebook(*cells), config))
    assert answers["Q1"].text == "Q1 text." and "appears 2 times" in answers["Q1"].note
    assert answers["Q2"].text == "Q2 text."


def test_a_copied_tagged_cell_uses_the_answered_copy():
    cells = [tagged(md(Q1_CELL + "\n\n**Answer:**")), code(), tagged(md(Q1_CELL + "\n\n**Answer:** Mine."))]
    answer = extract_answers(notebook(*cells), one_question_config())[0]
    assert answer.text == "Mine." and "the question appears 2 times (cells 0, 2); the one in cell 2 is used" in answer.note


def test_a_tag_naming_no_question_is_ignored_with_a_note():
    cell = tagged(md(Q1_CELL + "\n\n**Answer:** Blurry digits."), "Q9")
    answer = extract_answers(notebook(code("import torch"), cell, code("train()")), one_question_config())[0]
    assert answer.found and answer.text == "Blurry digits."          # read by its text, as untagged
    assert "cell 1 is tagged as the answer cell of 'Q9', which is no question of the config" in answer.note
    # a stray tagged cell no answer took: said on the first answer, not dropped
    stray = tagged(md("Leftover notes."), "Q9")
    answer = extract_answers(notebook(stray, code(), md(Q1_CELL + "\n\n**Answer:** Blurry.")), one_question_config())[0]
    assert answer.text == "Blurry." and "cell 0 is tagged" in answer.note and "part of no answer" in answer.note
    # a malformed tag value is no question either
    odd = md(Q1_CELL + "\n\n**Answer:** Blurry.")
    odd.metadata[KEY] = {"answer": 1}
    assert "answer cell of 1," in extract_answers(notebook(odd), one_question_config())[0].note


def test_a_tagged_code_cell_is_said_on_its_question():
    cells = [md(Q1_CELL + "\n\n**Answer:** Blurry."), tagged(code("print('my answer')"))]
    answer = extract_answers(notebook(*cells), one_question_config())[0]
    assert answer.text == "Blurry." and "cell 1 is tagged as this answer's cell but is a code cell" in answer.note


def test_the_metadata_key_comes_from_the_config():
    config = one_question_config()
    config = config.model_copy(update={"assignment": config.assignment.model_copy(update={"answer_cell_key": "course"})})
    nb = notebook(code("import torch"), tagged(md(ODD_TEXT), key="course"), code("train()"))
    assert extract_answers(nb, config)[0].text == ODD_TEXT
    assert not extract_answers(nb, one_question_config())[0].found   # under another key: no tag


@pytest.mark.skipif(not (REFERENCE_DIR / "handout.ipynb").exists(), reason="reference/handout.ipynb not written yet")
def test_the_handout_tags_each_question_cell_once_and_samples_read_the_same_tagged():
    import nbformat

    from grader.paths import REPO_ROOT

    handout = nbformat.read(REFERENCE_DIR / "handout.ipynb", as_version=4)
    tags = {cell.id: cell.metadata[KEY]["answer"] for cell in handout.cells if KEY in cell.metadata}
    assert sorted(tags.values()) == sorted(q.id for q in CONFIG.questions)
    assert all(handout.cells[[c.id for c in handout.cells].index(i)].cell_type == "markdown" for i in tags)
    # A student starting from the handout keeps its cells' ids and tags: the sample submissions
    # (built from the same solution, untagged) read the same with the handout's tags put back.
    samples = sorted((REPO_ROOT / "submissions").glob("*.ipynb"))
    assert len(samples) == 6
    for path in samples:
        nb = nbformat.read(path, as_version=4)
        plain = extract_answers(nb, CONFIG, template=handout)
        hits = 0
        for cell in nb.cells:
            if cell.get("id") in tags:
                tagged(cell, tags[cell.id])
                hits += 1
        assert hits == len(CONFIG.questions), path.name
        assert extract_answers(nb, CONFIG, template=handout) == plain, path.name
