#!/usr/bin/env python3
"""Checks the declared MSRV against the resolved dependencies' own `rust-version` fields.

For the crate with no features, and with each feature alone, it walks the resolved
dependency graph (normal and build dependencies; dev-dependencies do not bind users) and
takes the highest `rust-version` any package declares. That must not exceed what Cargo.toml
declares: `package.rust-version` for the core, and `[package.metadata.loopglue.msrv]` for a
feature that needs a newer compiler. Prints the table it derived; exits 1 on a breach.
"""
import json
import subprocess
import sys
import tomllib


def version(text):
    return tuple(int(part) for part in text.split("."))


def show(v):
    return ".".join(str(part) for part in v)


def metadata(features):
    cmd = ["cargo", "metadata", "--format-version", "1", "--locked",
           "--filter-platform", "x86_64-unknown-linux-gnu"]
    if features:
        cmd += ["--features", features]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def highest(meta):
    """The highest rust-version among the packages the root needs to build, and who needs it."""
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = meta["resolve"]["root"]
    seen, stack, best = set(), [root], ((0,), None)
    while stack:
        node = nodes[stack.pop()]
        for dep in node["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if node["id"] == root and kinds <= {"dev"}:
                continue  # dev-dependencies of the crate itself: tests and benches only
            if dep["pkg"] not in seen:
                seen.add(dep["pkg"])
                stack.append(dep["pkg"])
    for pkg in seen:
        declared = packages[pkg].get("rust_version")
        if declared and version(declared) > best[0]:
            best = (version(declared), packages[pkg]["name"])
    return best


def main():
    with open("Cargo.toml", "rb") as f:
        manifest = tomllib.load(f)
    package = manifest["package"]
    core = version(package["rust-version"])
    per_feature = package.get("metadata", {}).get("loopglue", {}).get("msrv", {})
    features = sorted(f for f in manifest.get("features", {}) if f != "default")
    features += sorted(name for name, dep in manifest.get("dependencies", {}).items()
                       if isinstance(dep, dict) and dep.get("optional")
                       and name not in features and f"dep:{name}" not in
                       str(manifest.get("features", {})))
    failed = False
    print(f"{'features':<12} {'needs':<8} {'declared':<9} because of")
    for feature in [""] + features:
        need, who = highest(metadata(feature))
        declared = version(per_feature.get(feature, package["rust-version"])) if feature else core
        ok = need <= declared
        failed |= not ok
        print(f"{feature or '(core)':<12} {show(need):<8} {show(declared):<9} {who or '-'}"
              f"{'' if ok else '   <-- exceeds the declared MSRV'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
