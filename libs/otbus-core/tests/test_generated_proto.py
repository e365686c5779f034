"""The committed protobuf code is what schemas/proto/generate.sh makes of the .proto files."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
GENERATED = [
    "libs/otbus-core/src/otbus_core/_generated",
    "services/zerobus-sink/src/otbus_zerobus_sink/_generated",
]


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    subprocess.run(["bash", str(ROOT / "schemas/proto/generate.sh"), str(tmp_path)], check=True, cwd=ROOT)
    for rel in GENERATED:
        fresh = {p.name: p.read_bytes() for p in (tmp_path / rel).iterdir() if p.suffix in (".py", ".pyi")}
        committed = {
            p.name: p.read_bytes()
            for p in (ROOT / rel).iterdir()
            if p.suffix in (".py", ".pyi") and p.stem != "__init__"
        }
        assert fresh, f"generate.sh wrote nothing into {rel}"
        assert sorted(fresh) == sorted(committed), f"{rel}: files differ; run schemas/proto/generate.sh"
        for name, data in fresh.items():
            assert committed[name] == data, f"{rel}/{name} is stale; run schemas/proto/generate.sh"
