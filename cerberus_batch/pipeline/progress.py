"""What the user sees while a cohort runs: slides and chunks done, rate, ETA."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunProgress:
    def __init__(self, slides: int, enabled: bool = True):
        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("{task.description:<7}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
        )
        self.slides = self.bar.add_task("slides", total=slides, rate="")
        self.chunks = self.bar.add_task("chunks", total=0, rate="")

    def __enter__(self) -> "RunProgress":
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def note(self, text: str) -> None:
        self.console.print(escape(text), soft_wrap=True)  # one line each, however long: logs are grepped

    def add_chunks(self, total: int, already: int) -> None:
        task = self.bar.tasks[self.chunks]
        self.bar.update(self.chunks, total=(task.total or 0) + total, advance=already)

    def chunk_done(self) -> None:
        self.bar.advance(self.chunks)
        speed = self.bar.tasks[self.chunks].speed
        if speed:
            self.bar.update(self.chunks, rate=f"{speed * 60:.1f} chunks/min")

    def slide_finished(self, slide_id: str, ok: bool, reason: str | None = None) -> None:
        self.bar.advance(self.slides)
        if not ok:
            self.console.print(f"[red]FAILED[/red] {escape(slide_id)}: {escape(reason or '')}", soft_wrap=True)
