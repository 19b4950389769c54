/**
 * lookimage as a process: its standard output against the existing tool's
 * (tests/vectors/*.lookimage.txt), exit codes, and one-line errors for
 * every way a payload can disagree with its header, and for files that are
 * not images. Broken images are made by python3 (tests/helpers/lookimage.ts),
 * not by our own encoder. How it reads and shows the header's fields is in
 * lookimage-header.test.ts.
 */

import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { ROOT } from "@ramdisk-tools/lab/paths.ts";
import { VECTORS } from "../helpers/common.ts";
import { expectFailure, LOOKIMAGE_TIMEOUT_MS, lookimage, lookimageCases, VECTOR_NAMES } from "../helpers/lookimage.ts";

setDefaultTimeout(LOOKIMAGE_TIMEOUT_MS);

const cases = lookimageCases();
const image = (name: string) => join(cases.dir, name);

describe("the existing tool's output, byte for byte", () => {
  for (const name of VECTOR_NAMES) {
    test(`${name}.img`, async () => {
      const expected = await Bun.file(join(VECTORS, `${name}.lookimage.txt`)).text();
      for (const flags of [[], ["-s"], ["--skip-checksum"]]) {
        const run = await lookimage(...flags, join(VECTORS, `${name}.img`));
        expect(run.exitCode).toBe(0);
        expect(run.stdout).toBe(expected);
        expect(run.stderr).not.toMatch(/^lookimage: (?!warning: )/m);
      }
    });
  }

  test("pool-odd images get netboot warnings on stderr, and stdout stays the same", async () => {
    for (const name of ["pool-odd", "pool-odd-z"]) {
      const run = await lookimage(join(VECTORS, `${name}.img`));
      expect(run.exitCode).toBe(0);
      expect(run.stdout).toBe(await Bun.file(join(VECTORS, `${name}.lookimage.txt`)).text());
      expect(run.stderr).toContain(
        "lookimage: warning: image size of 300000 bytes is below 1 MiB, so a netbooting sled ignores the offer",
      );
      expect(run.stderr).toContain(
        "lookimage: warning: image size of 300000 bytes is not a multiple of 131072 (128 KiB)",
      );
    }
    const quiet = await lookimage(join(VECTORS, "pool-1m-z.img"));
    expect(quiet.stderr).toBe("");
  });
});

describe("payloads that match their header", () => {
  test("a multi-megabyte image made by python zlib, and its stored twin", async () => {
    for (const name of ["good-z.img", "good.img"]) {
      const run = await lookimage(image(name));
      expect(run.exitCode).toBe(0);
      expect(run.stdout).toContain(`image sum = ${cases.facts.rawSha256}\n`);
      expect(run.stderr).toBe("");
    }
  });

  test("a stream that ends exactly at a read piece's end", async () => {
    const run = await lookimage(image("boundary-z.img"));
    expect(run.exitCode).toBe(0);
  });
});

describe("payloads that do not", () => {
  test("one bit flipped in a stored payload: SHA-256 mismatch, after the header lines", async () => {
    const run = await lookimage(image("flipped.img"));
    expectFailure(
      run,
      new RegExp(
        `^lookimage: image sum ${cases.facts.flippedSha256} does not match sum from header ${cases.facts.rawSha256}$`,
      ),
    );
    expect(run.stdout).toContain("dataset name = rpool/ROOT/ramdisk\n");
  });

  test("one bit flipped in a zlib stream: corrupt, with zlib's reason", async () => {
    expectFailure(
      await lookimage(image("flipped-z.img")),
      /^lookimage: zlib stream is corrupt, after \d+ payload bytes: .+ \(Z_DATA_ERROR\)$/,
    );
  });

  test("a damaged Adler-32 trailer", async () => {
    expectFailure(await lookimage(image("adler-z.img")), /zlib stream is corrupt.*incorrect data check/);
  });

  test("a stream cut short, with the header's data size adjusted", async () => {
    expectFailure(
      await lookimage(image("cut-z.img")),
      /^lookimage: zlib stream ends early, after \d+ payload bytes: unexpected end of file/,
    );
  });

  test("a stream cut short, header unchanged: the file is truncated", async () => {
    const run = await lookimage(image("short-file-z.img"));
    expectFailure(run, /but the header says \d+ \(4096 \+ data size \d+\): truncated$/);
    expect(run.stdout).toBe("");
  });

  test("bytes after the zlib stream within data size", async () => {
    const extra = "\x00garbage after the stream".length;
    expectFailure(
      await lookimage(image("trailing-z.img")),
      new RegExp(
        `^lookimage: zlib stream ends after ${cases.facts.streamSize} of the ${cases.facts.streamSize + extra} payload bytes, leaving ${extra} trailing bytes$`,
      ),
    );
  });

  test("bytes after a stream that ends exactly at a read piece's end", async () => {
    expectFailure(
      await lookimage(image("boundary-trailing-z.img")),
      new RegExp(
        `zlib stream ends after ${cases.facts.boundaryConsumed} of the ${cases.facts.boundaryConsumed + 4} payload bytes, leaving 4 trailing bytes`,
      ),
    );
  });

  test("bytes after the end of the file that data size does not count", async () => {
    expectFailure(await lookimage(image("longer-file-z.img")), /: has trailing bytes$/);
  });

  test("a stream that inflates past image size stops one byte after it", async () => {
    const run = await lookimage(image("bomb-z.img"));
    expectFailure(
      run,
      /^lookimage: zlib stream inflates to more than 1048576 bytes, but header says there should be 1048576$/,
    );
    const json = await lookimage("--json", image("bomb-z.img"));
    expect(json.exitCode).toBe(1);
    const report = JSON.parse(json.stdout);
    expect(report.verification).toEqual({
      checked: true,
      ok: false,
      bytes: 1048577,
      sha256: null,
      error: "zlib stream inflates to more than 1048576 bytes, but header says there should be 1048576",
    });
  });

  test("a complete stream with fewer bytes than image size", async () => {
    expectFailure(
      await lookimage(image("fewer-z.img")),
      new RegExp(
        `^lookimage: read ${cases.facts.rawSize} bytes of image, but header says there should be ${cases.facts.rawSize + 128 * 1024}$`,
      ),
    );
  });

  test("a payload that is not zlib at all", async () => {
    expectFailure(
      await lookimage(image("garbage-z.img")),
      /zlib stream is corrupt, after 0 payload bytes: incorrect header check/,
    );
  });

  test("data size 0: refused after the header lines, without a ratio line, even with -s", async () => {
    for (const flags of [[], ["-s"]]) {
      const run = await lookimage(...flags, image("data-size-0.img"));
      expectFailure(run, /^lookimage: data size is 0$/);
      expect(run.stdout).toEndWith("dataset name = rpool/ROOT/ramdisk\n");
      expect(run.stdout).not.toContain("ratio");
    }
  });

  test("image size below data size", async () => {
    expectFailure(
      await lookimage(image("image-smaller-z.img")),
      new RegExp(`^lookimage: image size ${cases.facts.streamSize - 1} < data size ${cases.facts.streamSize}$`),
    );
  });
});

test("the ratio rounds as Rust's {:.2} does: exact halves to even", async () => {
  const ratios: Record<number, string> = { 17: "2.12", 19: "2.38", 21: "2.62", 23: "2.88" };
  for (const [imageSize, ratio] of Object.entries(ratios)) {
    const run = await lookimage("-s", image(`ratio-${imageSize}.img`));
    expect(run.exitCode).toBe(0);
    expect(run.stdout).toEndWith(`\nratio = ${ratio}x\n`);
  }
});

describe("files that are not images", () => {
  test("bad magic", async () => {
    const run = await lookimage(image("bad-magic.img"));
    expectFailure(run, /bad magic 0x00000000, expected 0x1deb0075: not a boot image$/);
    expect(run.stdout).toBe("");
  });

  test("a file shorter than the header", async () => {
    const path = image("tiny.img");
    await Bun.write(path, new Uint8Array(100));
    expectFailure(await lookimage(path), /file is 100 bytes, shorter than the 4096-byte header$/);
  });

  test("a missing file", async () => {
    expectFailure(
      await lookimage(image("missing.img")),
      /^lookimage: cannot open .*missing\.img: no such file or directory$/,
    );
  });

  test("a directory", async () => {
    expectFailure(await lookimage(cases.dir), /is a directory, not an image file$/);
  });
});

describe("the command line", () => {
  test("usage errors exit 2 with one line", async () => {
    for (const args of [[], ["a.img", "b.img"], ["--no-such-flag", image("good.img")]]) {
      const run = await lookimage(...args);
      expect(run.exitCode).toBe(2);
      expect(run.stderr.trimEnd().split("\n")).toHaveLength(1);
      expect(run.stderr).toMatch(/^lookimage: .*see lookimage --help\n$/);
    }
  });

  test("--help shows the usage and an example; --version the package version", async () => {
    const help = await lookimage("--help");
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toContain("Usage: lookimage [-s|--skip-checksum] [--json] IMAGE");
    expect(help.stdout).toContain("Examples:");
    const version = await lookimage("--version");
    expect(version.exitCode).toBe(0);
    const { version: expected } = await Bun.file(join(ROOT, "package.json")).json();
    expect(version.stdout.trim()).toBe(expected);
  });
});
