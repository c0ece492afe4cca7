"""LSL client: find a PhantomLink session's Neural stream and print its samples with timestamps.

Needs only pylsl. With `make run` going and a session created (curl -X POST
http://localhost:8000/api/sessions/create), run one of:

    .venv/bin/python examples/lsl_client.py swift-neural-42              # that session, by name
    .venv/bin/python examples/lsl_client.py swift-neural-42 --markers    # plus its trial events
    .venv/bin/python examples/lsl_client.py --type EEG                   # any session, as the original's clients did

Each line shows the sample's LSL timestamp (the time the broker scheduled the bin, on this
machine's LSL clock), its age when pulled, and a summary of the spike counts. At the end: rate,
interval mean and std from the timestamps. See docs/lsl.md for every stream and its metadata.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import pylsl


def find_neural(args: argparse.Namespace) -> pylsl.StreamInfo:
    """The Neural stream of the session, by name, or the first stream of the given type."""
    if args.session:
        name = f"{args.prefix}-Neural-{args.session}"
        found = pylsl.resolve_byprop("name", name, 1, args.timeout)
        if not found:
            sys.exit(f"no LSL stream named {name!r} within {args.timeout} s: is the bridge running "
                     "(python -m bridges.lsl) and does the session exist?")
    else:
        found = pylsl.resolve_byprop("type", args.type, 1, args.timeout)
        if not found:
            sys.exit(f"no LSL stream of type {args.type!r} within {args.timeout} s")
    return found[0]


def unit_labels(inlet: pylsl.StreamInlet) -> list[str]:
    """Channel labels (unit ids) from the stream's description."""
    labels = []
    channel = inlet.info(5).desc().child("channels").child("channel")
    while not channel.empty():
        labels.append(channel.child_value("label"))
        channel = channel.next_sibling()
    return labels


def open_markers(info: pylsl.StreamInfo, args: argparse.Namespace) -> pylsl.StreamInlet | None:
    name = info.name().replace("-Neural-", "-Markers-", 1)
    found = pylsl.resolve_byprop("name", name, 1, args.timeout)
    if not found:
        print(f"(no Markers stream {name!r}; trial events will not be shown)")
        return None
    return pylsl.StreamInlet(found[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("session", nargs="?", help="session code (omit to pick by --type)")
    parser.add_argument("--type", default="EEG", help="stream type to resolve without a session")
    parser.add_argument("--prefix", default="PhantomLink", help="PHANTOM_LSL_STREAM_NAME of the bridge")
    parser.add_argument("--markers", action="store_true", help="also print the Markers stream")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to listen")
    parser.add_argument("--every", type=int, default=20, help="print every Nth sample")
    parser.add_argument("--timeout", type=float, default=10.0, help="resolve timeout, s")
    args = parser.parse_args()

    info = find_neural(args)
    inlet = pylsl.StreamInlet(info)
    labels = unit_labels(inlet)
    print(f"{info.name()}: {info.channel_count()} units at {info.nominal_srate():g} Hz nominal, "
          f"type {info.type()}, source_id {info.source_id()}; units {', '.join(labels[:5])}, ...")
    markers = open_markers(info, args) if args.markers else None

    stamps: list[float] = []
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        sample, stamp = inlet.pull_sample(timeout=1.0)
        if sample is None:
            print("no sample for 1 s (paused session?)")
            continue
        stamps.append(stamp)
        if len(stamps) % args.every == 1:
            age_ms = (pylsl.local_clock() - stamp) * 1000
            print(f"t={stamp:.4f}  age {age_ms:6.2f} ms  spikes {sum(sample):4d} on "
                  f"{sum(1 for c in sample if c)}/{len(sample)} units  first 5: {sample[:5]}")
        while markers is not None:
            event, at = markers.pull_sample(timeout=0.0)
            if event is None:
                break
            print(f"t={at:.4f}  MARKER {event[0]}")

    if len(stamps) > 2:
        gaps = [(b - a) * 1000 for a, b in zip(stamps, stamps[1:])]
        print(f"{len(stamps)} samples, {len(stamps) / args.seconds:.2f} Hz; timestamp interval "
              f"mean {statistics.mean(gaps):.3f} ms, std {statistics.pstdev(gaps):.3f} ms")


if __name__ == "__main__":
    main()
