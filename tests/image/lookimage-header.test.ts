/**
 * lookimage as a process, on the header: names and fields as the existing
 * tool reads and prints them (NULs, bytes that are not UTF-8, sizes of 2^53
 * and more), with warnings where the sled kernel would read them otherwise,
 * and the --json object. The headers are written by python3
 * (tests/helpers/lookimage.ts), not by our own encoder.
 */

import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { VECTORS } from "../helpers/common.ts";
import { expectFailure, LOOKIMAGE_TIMEOUT_MS, lookimage, lookimageCases, VECTOR_NAMES } from "../helpers/lookimage.ts";

setDefaultTimeout(LOOKIMAGE_TIMEOUT_MS);

const cases = lookimageCases();
const image = (name: string) => join(cases.dir, name);

describe("names as the existing tool prints them (String::from_utf8 of the field, NULs trimmed at both ends)", () => {
  test("leading NULs are trimmed as trailing ones are; a warning says the kernel would read an empty dataset", async () => {
    const run = await lookimage(image("name-leading-nul.img"));
    expect(run.exitCode).toBe(0);
    const lines = run.stdout.split("\n");
    expect(lines[0]).toBe("image name = lead");
    expect(lines[6]).toBe("dataset name = rpool/ROOT/ramdisk");
    expect(run.stderr.trimEnd().split("\n")).toEqual([
      "lookimage: warning: dataset name holds a NUL at byte 72 with more bytes after it: " +
        'the sled kernel reads it only up to there, as ""',
      "lookimage: warning: image name holds a NUL at byte 200 with more bytes after it: " +
        'a reader that stops at the first NUL sees ""',
    ]);
    const json = JSON.parse((await lookimage("-s", "--json", image("name-leading-nul.img"))).stdout);
    expect([json.imageName, json.dataset]).toEqual(["lead", "rpool/ROOT/ramdisk"]);
  });

  test("a field whose last byte is not NUL is printed whole, as the existing tool prints it, with warnings", async () => {
    const run = await lookimage(image("name-full.img"));
    expect(run.exitCode).toBe(0);
    const lines = run.stdout.split("\n");
    expect(lines[0]).toBe(`image name = ${"n".repeat(127)}N`);
    expect(lines[6]).toBe(`dataset name = ${"d".repeat(100)}\0${"e".repeat(27)}`);
    expect(run.stderr.trimEnd().split("\n")).toEqual([
      "lookimage: warning: the sled kernel would refuse this image: the dataset name field does not end in a NUL (byte 199 is 0x65)",
      `lookimage: warning: dataset name holds a NUL at byte 172 with more bytes after it: the sled kernel reads it only up to there, as "${"d".repeat(100)}"`,
      "lookimage: warning: the image name field does not end in a NUL (byte 327 is 0x4e): a reader that stops only at a NUL reads past it",
    ]);
  });

  test("bytes after an embedded NUL are printed; a warning says what a reader stopping at the NUL sees", async () => {
    const run = await lookimage(image("name-nul.img"));
    expect(run.exitCode).toBe(0);
    const lines = run.stdout.split("\n");
    expect(lines[0]).toBe("image name = test\0\0ing\u00e9");
    expect(lines[6]).toBe("dataset name = rpool/ROOT/ramdisk\0old");
    expect(Buffer.from(`${lines[0]}\n`)).toEqual(Buffer.from("image name = test\0\0ing\xc3\xa9\n", "latin1"));
    expect(run.stderr.trimEnd().split("\n")).toEqual([
      "lookimage: warning: dataset name holds a NUL at byte 90 with more bytes after it: " +
        'the sled kernel reads it only up to there, as "rpool/ROOT/ramdisk"',
      "lookimage: warning: image name holds a NUL at byte 204 with more bytes after it: " +
        'a reader that stops at the first NUL sees "test"',
    ]);
  });

  test("a byte order mark is part of the name", async () => {
    const run = await lookimage("-s", image("name-bom.img"));
    expect(run.exitCode).toBe(0);
    expect(run.stdout.split("\n")[0]).toBe("image name = \ufeffbom");
    expect(run.stderr).toBe("");
  });

  test("bytes that are not UTF-8, even after the NUL, are refused on one line before anything is printed", async () => {
    for (const flags of [[], ["-s"], ["--json"]]) {
      const name = await lookimage(...flags, image("name-not-utf8.img"));
      expectFailure(name, /^lookimage: .*name-not-utf8\.img: image name is not valid UTF-8 \(from byte 203\)$/);
      expect(name.stdout).toBe("");
      const dataset = await lookimage(...flags, image("dataset-not-utf8.img"));
      expectFailure(dataset, /^lookimage: .*dataset-not-utf8\.img: dataset name is not valid UTF-8 \(from byte 78\)$/);
      expect(dataset.stdout).toBe("");
    }
  });
});

describe("header fields as the existing lookimage reads them", () => {
  test("a target size below the image size is refused at the header, before anything is printed", async () => {
    for (const flags of [[], ["-s"], ["--json"]]) {
      const run = await lookimage(...flags, image("odd-target.img"));
      expectFailure(run, /odd-target\.img: target size of 4096 bytes is less than image size of 300000$/);
      expect(run.stdout).toBe("");
    }
  });

  test("a target size of 2^64 - 1 is printed in full, and the image verifies", async () => {
    const run = await lookimage(image("target-huge.img"));
    expect(run.exitCode).toBe(0);
    expect(run.stdout.split("\n")[4]).toBe("target size = 18446744073709551615");
    const json = await lookimage("--json", image("target-huge.img"));
    expect(json.exitCode).toBe(0);
    expect(json.stdout).toContain('"targetSize": 18446744073709551615,');
    expect(JSON.parse(json.stdout).verification.ok).toBe(true);
  });

  test("an image size of 2^60: printed with its ratio; -s exits 0, a check fails on one line", async () => {
    const expectedLines = [
      "image name = made-by-python",
      "flags = 0x1 (COMPRESSED)",
      `data size = ${cases.facts.streamSize}`,
      "image size = 1152921504606846976",
      "target size = 1152921504606846976",
      `image sum = ${cases.facts.rawSha256}`,
      "dataset name = rpool/ROOT/ramdisk",
      `ratio = ${(2 ** 60 / cases.facts.streamSize).toFixed(2)}x`,
      "",
    ].join("\n");
    const skipped = await lookimage("-s", image("image-huge-z.img"));
    expect(skipped.exitCode).toBe(0);
    expect(skipped.stdout).toBe(expectedLines);
    expect(skipped.stderr).toContain("image size of 1152921504606846976 bytes is above the kernel's maximum");
    const checked = await lookimage(image("image-huge-z.img"));
    expectFailure(checked, /^lookimage: image size of 1152921504606846976 bytes is beyond any real image$/);
    expect(checked.stdout).toBe(expectedLines);
    const json = await lookimage("--json", image("image-huge-z.img"));
    expect(json.exitCode).toBe(1);
    expect(json.stdout).toContain('"imageSize": 1152921504606846976,');
    expect(JSON.parse(json.stdout).verification).toEqual({
      checked: false,
      ok: false,
      bytes: 0,
      sha256: null,
      error: "image size of 1152921504606846976 bytes is beyond any real image",
    });
  });

  test("a data size of 2^63 is a file shorter than its header says, refused even with -s", async () => {
    for (const flags of [[], ["-s"]]) {
      const run = await lookimage(...flags, image("data-huge-z.img"));
      expectFailure(
        run,
        /file is \d+ bytes but the header says 9223372036854779904 \(4096 \+ data size 9223372036854775808\): truncated$/,
      );
      expect(run.stdout).toBe("");
    }
  });
});

describe("--json", () => {
  test("the header's facts and the verification, for each vector", async () => {
    for (const name of VECTOR_NAMES) {
      const run = await lookimage("--json", join(VECTORS, `${name}.img`));
      expect(run.exitCode).toBe(0);
      const report = JSON.parse(run.stdout);
      // The text output of the existing tool carries the same cases.facts.
      const text = Object.fromEntries(
        (await Bun.file(join(VECTORS, `${name}.lookimage.txt`)).text())
          .trimEnd()
          .split("\n")
          .map((line) => line.split(" = ") as [string, string]),
      );
      const compressed = text.flags === "0x1 (COMPRESSED)";
      expect(report).toEqual({
        imageName: text["image name"],
        flags: compressed ? 1 : 0,
        flagNames: compressed ? ["COMPRESSED"] : [],
        dataSize: Number(text["data size"]),
        imageSize: Number(text["image size"]),
        targetSize: Number(text["target size"]),
        sha256: text["image sum"],
        dataset: text["dataset name"],
        ratio: compressed ? Number(text["image size"]) / Number(text["data size"]) : null,
        compressed,
        warnings: name.startsWith("pool-odd")
          ? expect.arrayContaining([expect.stringContaining("netbooting sled")])
          : [],
        verification: {
          checked: true,
          ok: true,
          bytes: Number(text["image size"]),
          sha256: text["image sum"],
          error: null,
        },
      });
      expect(report.ratio === null ? null : `${report.ratio.toFixed(2)}x`).toBe(text.ratio ?? null);
    }
  });

  test("with -s the payload is not checked", async () => {
    const run = await lookimage("--json", "-s", image("flipped.img"));
    expect(run.exitCode).toBe(0);
    expect(JSON.parse(run.stdout).verification).toEqual({
      checked: false,
      ok: false,
      bytes: 0,
      sha256: null,
      error: null,
    });
  });

  test("a failed check: exit 1, the object on stdout, the reason on stderr", async () => {
    const run = await lookimage("--json", image("flipped.img"));
    expectFailure(run, /image sum .* does not match sum from header/);
    const report = JSON.parse(run.stdout);
    expect(report.verification).toEqual({
      checked: true,
      ok: false,
      bytes: cases.facts.rawSize,
      sha256: cases.facts.flippedSha256,
      error: `image sum ${cases.facts.flippedSha256} does not match sum from header ${cases.facts.rawSha256}`,
    });
  });

  test("kernel refusals are warnings", async () => {
    const run = await lookimage("--json", image("below-4096.img"));
    expect(run.exitCode).toBe(0);
    const report = JSON.parse(run.stdout);
    expect(report.warnings).toContain(
      "the sled kernel would refuse this image: image size of 100 bytes is below the kernel's minimum of 4096",
    );
    expect(run.stderr).toContain(
      "lookimage: warning: the sled kernel would refuse this image: image size of 100 bytes is below the kernel's minimum of 4096\n",
    );
  });
});
