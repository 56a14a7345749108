"""Scoring predictions on a labelled folder: the true class from the folder names, the figures of a test report."""
from core.analysis.scored import label_of, score_predictions
from core.inference.predict import Row

CLASSES = ["ants", "bees"]


def test_the_true_class_is_the_nearest_folder_named_as_a_class():
    assert label_of("ants/a.jpg", CLASSES) == 0
    assert label_of("batch/bees/deeper/b.png", CLASSES) == 1  # the nearest class folder above the image
    assert label_of("Bees/c.jpg", CLASSES) == 1  # case is forgiven when nothing matches exactly
    assert label_of("bees/ants/d.jpg", CLASSES) == 0
    assert label_of("wasps/e.jpg", CLASSES) is None and label_of("f.jpg", CLASSES) is None


def row(path, top, p=0.9, error=""):
    return Row(path, None if error else top, None if error else p, [] if error else [(top, p)], error)


def test_scores_count_what_was_left_out_and_keep_the_users_names():
    rows = [row("/tmp/x/ants/1.jpg", "ants"), row("/tmp/x/ants/2.jpg", "bees", 0.97), row("/tmp/x/bees/3.jpg", "bees"),
            row("/tmp/x/bees/4.jpg", "bees", 0.6), row("/tmp/x/other/5.jpg", "ants"),
            row("/tmp/x/bees/6.jpg", None, error="cannot be read")]
    names = {r.path: r.path.removeprefix("/tmp/x/") for r in rows}
    score = score_predictions(rows, names, CLASSES)
    assert (score.scored, score.correct, score.unreadable, score.unlabelled) == (4, 3, 1, ["other/5.jpg"])
    assert score.confusion == [[1, 1], [0, 2]]
    assert [m.name for m in score.misclassified] == ["ants/2.jpg"]
    assert score.per_class[0].recall == 0.5 and score.per_class[1].precision == 2 / 3
    a = score.accuracy
    assert a.value == 0.75 and a.low < 0.75 < a.high
    assert "75.0% (95% CI" in score.summary() and "1 under no folder named as a class" in score.summary()
    data = score.to_json()
    assert data["misclassified"][0] == {"path": "ants/2.jpg", "true": "ants", "predicted": "bees", "probability": 0.97}
    assert score_predictions([row("/a/x.jpg", "ants")], {"/a/x.jpg": "x.jpg"}, CLASSES) is None


def test_images_the_run_trained_on_are_counted_and_said(tmp_path):
    from core.analysis.scored import trained_on

    lists = tmp_path / "run" / "lists"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text(f"{tmp_path}/x/ants/1.jpg\t0\n")
    (lists / "val.txt").write_text(f"{tmp_path}/x/bees/3.jpg\t1\n")
    (lists / "test.txt").write_text(f"{tmp_path}/x/ants/2.jpg\t0\n")
    rows = [row(f"{tmp_path}/x/ants/1.jpg", "ants"), row(f"{tmp_path}/x/ants/2.jpg", "ants"),
            row(f"{tmp_path}/x/bees/3.jpg", "bees")]
    names = {r.path: r.path.removeprefix(f"{tmp_path}/x/") for r in rows}
    score = score_predictions(rows, names, CLASSES, trained_on(tmp_path / "run"))
    assert score.seen_in_training == 2 and score.to_json()["seen_in_training"] == 2
    assert "2 of them are in the run's training or validation list: for them this is not a test" in score.summary()
    assert trained_on(tmp_path / "no-run") == set()
