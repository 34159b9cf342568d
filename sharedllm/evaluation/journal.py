"""A trial journal: the per-trial records of a long evaluation, appended as each trial finishes, so that a stopped
run (a session's end, Ctrl-C, a crash) continues where it stopped instead of starting over. A passkey prompt at
128K takes minutes on a CPU; 50 of them outlast one session.

The journal is a hidden JSONL file in the output folder, named by a fingerprint of everything that decides a
trial's outcome (the method and its knobs, the model, the seed, the task's settings), so a run with other settings
never reads it. Its lengths and tasks are not part of the name (the same settings with fewer lengths reuse part of
it), so two runs of other lengths may share it at once: a finished run removes its own trials only, and the file
once none are left.

Each trial it journals is tagged with the machine it ran on (`ran_on`), so that a result finished from a journal
that a lent GPU started can say where its trials ran: its hardware block names only the machine that finished it.
A trial of a method that reads an adapter is also tagged with the adapter's weights (`weights`, the start of their
sha256): an adapter retrained into the same folder keeps its path, and its stopped run's trials are refused, not
reused.
"""

import hashlib
import json
import re
from pathlib import Path


class TrialJournal:
    def __init__(self, folder, task: str, name: str, settings: dict, machine: str | None = None,
                 weights: str | None = None):
        self.machine = machine  # not in the settings' digest: a run stopped on one machine continues on another
        self.weights = weights  # checked against each trial's tag instead (journals of older runs have none)
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.task, self.name = task, name
        self.path = Path(folder) / f"{journal_prefix(task, name)}{digest}.partial.jsonl"

    def others(self) -> list[Path]:
        """Journals of the same task and name with other settings: stopped runs this one does not continue (other
        knobs, model, seed or task settings; a knob added to the method since changes them too)."""
        return [path for path in journals_of(self.path.parent, self.task, self.name) if path != self.path]

    def load(self) -> list[dict]:
        """The records of the trials already done (none when there is no journal). A last line cut short by the
        stop that interrupted the run is dropped: that trial runs again."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        if stale := [r for r in records if self.weights and r.get("weights") not in (None, self.weights)]:
            from sharedllm.cli import InputError

            raise InputError(f"{self.path} holds {len(stale)} trials of other adapter weights (sha256 "
                             f"{stale[0]['weights']}..., now {self.weights}...): the adapter was changed since that run "
                             "stopped; delete the journal to score it again")
        return records

    def append(self, record: dict) -> None:
        """Journal a trial just run, first tagging it with this machine (in place: the result's copy of the record
        names it too, and `remove` finds it)."""
        if self.machine is not None:
            record.setdefault("ran_on", self.machine)
        if self.weights is not None:
            record.setdefault("weights", self.weights)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def remove(self, records: list[dict]) -> None:
        """Drop a finished run's trial records; the file goes once no other run's trials are left in it."""
        finished = set(map(canonical, records))
        left = [record for record in self.load() if canonical(record) not in finished]
        if left:  # a trial appended by another run between this read and the write is lost (milliseconds)
            self.path.write_text("".join(json.dumps(record) + "\n" for record in left), encoding="utf-8")
        else:
            self.path.unlink(missing_ok=True)


def canonical(record: dict) -> str:
    """A record as one string, so that finding records among thousands is a set look-up, not a comparison with each
    (a sliding ppl run journals thousands of windows); a NaN equals itself here, as it does not in a dict."""
    return json.dumps(record, sort_keys=True)


def journal_prefix(task: str, name: str) -> str:
    return f".{task}_{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}_"


def journals_of(folder, task: str, name: str) -> list[Path]:
    """Every journal of `task` and `name` in `folder`, whatever its settings."""
    return sorted(Path(folder).glob(f"{journal_prefix(task, name)}{'?' * 12}.partial.jsonl"))


class ReusedTrials:
    """`trials(key, run)` for a task's trial loop over `planned` keys (tuples of the records' `fields` values): the
    record of a stopped run with that key, else run()'s record, which is handed to `on_record` (to journal it). Its
    progress bar starts at the planned trials a stopped run did, so its rate and time left are this run's."""

    def __init__(self, done, fields: tuple[str, ...], planned: list[tuple], on_record=None, desc: str = "trials",
                 progress: bool = True):
        from tqdm.auto import tqdm

        self.by_key = {tuple(record[f] for f in fields): record for record in done}
        self.on_record = on_record
        self.bar = tqdm(total=len(planned), initial=sum(key in self.by_key for key in planned), desc=desc,
                        disable=not progress)

    def __call__(self, key: tuple, run) -> dict:
        record = self.by_key.get(key)
        if record is None:
            record = run()
            if self.on_record is not None:
                self.on_record(record)
            self.bar.update()
        return record

    def close(self) -> None:
        self.bar.close()


def by_machine(records: list[dict]) -> dict[str, int]:
    """How many of a result's journaled trials ran on each machine (their `ran_on` tags; records journaled before
    the tags existed count as "not recorded"). Trials never journaled (a held-out window not run) are left out."""
    counts = {}
    for record in records:
        if "not_run" not in record:
            machine = record.get("ran_on", "not recorded")
            counts[machine] = counts.get(machine, 0) + 1
    return counts


def provenance_counts(records: list[dict], done: list[dict]) -> dict:
    """What a trial result's counts say about where its trials came from: how many a stopped run's journal gave (not
    all of a journal need be used: the same settings with fewer lengths or trials use part of it), and on which
    machines they all ran."""
    reused = set(map(canonical, done))
    return {"trials_from_a_stopped_run": sum(canonical(record) in reused for record in records),
            "trials_by_machine": by_machine(records)}
