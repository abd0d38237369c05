"""Console lines from several threads at once (the chain and the driver's evaluation thread)."""

import threading

from pedray.console import say


def test_lines_from_two_threads_stay_whole(capfd):
    def write(tag: str) -> None:
        for index in range(2000):
            say(f"[{tag}] line {index} of a stage")

    threads = [threading.Thread(target=write, args=(tag,)) for tag in ("eval", "dfpo")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = capfd.readouterr().out.splitlines()
    assert len(lines) == 4000
    assert all(line.count("[") == 1 and line.endswith("of a stage") for line in lines)
