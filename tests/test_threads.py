"""Threaded callers: concurrency, and a pod outliving the thread that made it."""
import threading
from concurrent.futures import ThreadPoolExecutor

import nsbox
from helpers import wait_until


def test_many_threads_create_spawn_stop_concurrently():
    def worker(i):
        results = []
        for j in range(20):
            with nsbox.Pod(hostname=f"t{i}-{j}") as pod:
                r = pod.run(["hostname"], capture_output=True, text=True)
                p = pod.spawn(["sleep", "30"])
                results.append((r.stdout.strip(), pod.stop(), p.wait()))
        return results

    with ThreadPoolExecutor(8) as ex:
        all_results = list(ex.map(worker, range(8)))
    for i, results in enumerate(all_results):
        assert [r[0] for r in results] == [f"t{i}-{j}" for j in range(20)]
        assert all(r[1] == 0 and r[2] == -15 for r in results)


def test_pod_lives_after_its_creating_thread_exits():
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("pod", nsbox.Pod().start()))
    t.start()
    t.join()
    pod = box["pod"]
    try:
        assert not wait_until(lambda: not pod.alive, timeout=0.3)
        assert pod.run(["true"]).returncode == 0
    finally:
        pod.stop()


def test_spawn_from_a_thread_that_exits():
    with nsbox.Pod() as pod:
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("p", pod.spawn(["sleep", "30"])))
        t.start()
        t.join()
        p = box["p"]
        assert not wait_until(lambda: p.poll() is not None, timeout=0.3)
    assert p.returncode == -15
