/**
 * lookimage as a process: its standard output against the existing tool's
 * (tests/vectors/*.lookimage.txt), exit codes, and one-line errors for
 * every way a payload can disagree with its header. Broken images are made
 * by python3 (struct for the header, zlib as an independent compressor,
 * hashlib for the checksum), not by our own encoder.
 */

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { python, ROOT, VECTORS } from "../helpers/common.ts";
import { expectFailure, lookimage } from "../helpers/lookimage.ts";

const VECTOR_NAMES = ["pool-1m", "pool-1m-z", "pool-odd", "pool-odd-z"];
// Every test runs lookimage as a process, some several times, and the setup runs python3 over
// tens of MiB, on two cores shared with other work: room, but no assertion on time.
const SLOW = 60_000;
setDefaultTimeout(SLOW);

/**
 * Makes the test images in the directory given as argv[1] and prints a JSON
 * manifest of facts about them. A payload is (flags, header sizes, bytes);
 * the header is written with struct.pack straight from format.md.
 */
const PYTHON_IMAGES = String.raw`
import hashlib, json, os, random, struct, sys, zlib
out = sys.argv[1]
vectors = sys.argv[2]
facts = {}

def header(flags, data_size, image_size, sha, target=64 << 20, name=b"made-by-python", dataset=b"rpool/ROOT/ramdisk"):
    h = struct.pack("<IIQQQQ", 0x1DEB0075, 2, flags, data_size, image_size, target) + sha
    h += dataset.ljust(128, b"\0") + name.ljust(128, b"\0")
    return h.ljust(4096, b"\0")

def write(name, head, payload):
    with open(os.path.join(out, name), "wb") as f:
        f.write(head + payload)

def pool(size, seed):
    # Pool-like: runs of zeros, text and random bytes.
    r = random.Random(seed)
    words = [bytes(r.choice(b"abcdefghij") for _ in range(r.randint(2, 8))) for _ in range(300)]
    parts, n = [], 0
    while n < size:
        kind = r.randrange(3)
        if kind == 0: part = bytes(r.randrange(1, 65536))
        elif kind == 1: part = b" ".join(r.choices(words, k=r.randrange(10, 4000)))
        else: part = r.randbytes(r.randrange(1, 32768))
        parts.append(part)
        n += len(part)
    return b"".join(parts)[:size]

def compressed(name, raw, stream, image_size=None, sha=None, extra=b""):
    payload = stream + extra
    write(name, header(1, len(payload), len(raw) if image_size is None else image_size, sha or hashlib.sha256(raw).digest()), payload)

raw = pool(6 << 20, 1)
stream = zlib.compress(raw, 9)
facts["rawSha256"] = hashlib.sha256(raw).hexdigest()
facts["rawSize"] = len(raw)
facts["streamSize"] = len(stream)

# A good multi-piece image (several read and inflate pieces), and its stored twin.
compressed("good-z.img", raw, stream)
write("good.img", header(0, len(raw), len(raw), hashlib.sha256(raw).digest()), raw)

# One bit flipped in the stored payload: a SHA-256 mismatch.
flipped = bytearray(raw); flipped[len(raw) // 2] ^= 0x10
write("flipped.img", header(0, len(raw), len(raw), hashlib.sha256(raw).digest()), bytes(flipped))
facts["flippedSha256"] = hashlib.sha256(bytes(flipped)).hexdigest()

# One bit flipped inside the zlib stream.
bad = bytearray(stream); bad[len(stream) // 2] ^= 0x10
compressed("flipped-z.img", raw, bytes(bad))

# The Adler-32 trailer damaged: every deflate block is fine, the check is not.
compressed("adler-z.img", raw, stream[:-1] + bytes([stream[-1] ^ 1]))

# The stream cut short, with the header's data size adjusted to match.
compressed("cut-z.img", raw, stream[: len(stream) // 2])

# The stream cut short, header unchanged: the file is shorter than the header says.
with open(os.path.join(out, "short-file-z.img"), "wb") as f:
    f.write(header(1, len(stream), len(raw), hashlib.sha256(raw).digest()) + stream[: len(stream) // 2])

# Bytes after the end of the zlib stream, counted in data size.
compressed("trailing-z.img", raw, stream, extra=b"\x00garbage after the stream")

# Bytes after the end of the file that the header does not count.
with open(os.path.join(out, "longer-file-z.img"), "wb") as f:
    f.write(header(1, len(stream), len(raw), hashlib.sha256(raw).digest()) + stream + b"extra")

# A stream that ends exactly at a 1 MiB read piece, then trailing bytes in the
# next piece: random bytes fill most of the piece, and a run of zeros (about
# one stream byte per KiB) tunes the length to the byte.
random_part = random.Random(3).randbytes((1 << 20) - 1024)
head = zlib.compressobj(9)
start = head.compress(random_part)
for zeros in range(0, 4 << 20, 64):
    tail = head.copy()
    exact = start + tail.compress(bytes(zeros)) + tail.flush()
    if len(exact) == 1 << 20:
        break
else:
    raise SystemExit("no stream of exactly 1 MiB")
boundary_raw = random_part + bytes(zeros)
facts["boundaryConsumed"] = len(exact)
compressed("boundary-trailing-z.img", boundary_raw, exact, extra=b"tail")
compressed("boundary-z.img", boundary_raw, exact)

# A bomb: 64 MiB of zeros whose header claims 1 MiB.
bomb_raw = bytes(64 << 20)
compressed("bomb-z.img", bomb_raw, zlib.compress(bomb_raw, 9), image_size=1 << 20, sha=hashlib.sha256(bomb_raw[: 1 << 20]).digest())

# A complete stream that inflates to fewer bytes than the header claims (data size still below it).
compressed("fewer-z.img", raw, stream, image_size=len(raw) + (128 << 10))

# Not zlib at all.
compressed("garbage-z.img", raw, b"this is not a zlib stream" * 100)

# Sizes the existing lookimage refuses.
write("data-size-0.img", header(1, 0, 1 << 20, hashlib.sha256(b"").digest()), b"")
compressed("image-smaller-z.img", raw, stream, image_size=len(stream) - 1)

# A target size below the image size, which the existing lookimage refuses at the header.
small = pool(300000, 2)
write("odd-target.img", header(0, len(small), len(small), hashlib.sha256(small).digest(), target=4096), small)

# A kernel refusal that is only a warning: an image below the kernel's 4096 bytes.
tiny = pool(100, 4)
write("below-4096.img", header(0, len(tiny), len(tiny), hashlib.sha256(tiny).digest()), tiny)

# 64-bit sizes past 2^53: a target size of 2^64 - 1 with a good payload; an image size of 2^60
# (and target) behind a short zlib stream; a data size of 2^63 that no file here holds.
write("target-huge.img", header(0, len(small), len(small), hashlib.sha256(small).digest(), target=2**64 - 1), small)
compressed("image-huge-z.img", raw, stream, image_size=2**60, sha=hashlib.sha256(raw).digest())
with open(os.path.join(out, "image-huge-z.img"), "r+b") as f:
    f.seek(32); f.write(struct.pack("<Q", 2**60))
write("data-huge-z.img", header(1, 2**63, 2**63, hashlib.sha256(raw).digest(), target=2**63), stream)

# Ratios exactly halfway at two decimals (17/8 = 2.125 and so on), header only.
for image_size in (17, 19, 21, 23):
    write(f"ratio-{image_size}.img", header(1, 8, image_size, bytes(32)), bytes(8))

# Names only a damaged or foreign tool writes: bytes after a NUL, a byte order mark, bytes that are not UTF-8.
named = pool(1 << 20, 7)
def named_image(file, **names):
    write(file, header(0, len(named), len(named), hashlib.sha256(named).digest(), **names), named)
named_image("name-nul.img", name=b"test\0\0ing\xc3\xa9", dataset=b"rpool/ROOT/ramdisk\0old")
named_image("name-bom.img", name=b"\xef\xbb\xbfbom")
named_image("name-not-utf8.img", name=b"ok\0\xff")
named_image("dataset-not-utf8.img", dataset=b"rpool/\xc3(")
# NULs before the names, and fields with no NUL at their end (128 bytes of name).
named_image("name-leading-nul.img", name=b"\0\0lead\0", dataset=b"\0rpool/ROOT/ramdisk")
named_image("name-full.img", name=b"n" * 127 + b"N", dataset=b"d" * 100 + b"\0" + b"e" * 27)

# Bad magic.
with open(os.path.join(out, "bad-magic.img"), "wb") as f:
    f.write(b"\x00" * 4 + header(0, 16, 16, hashlib.sha256(bytes(16)).digest())[4:] + bytes(16))

print(json.dumps(facts))
`;

interface Facts {
  rawSha256: string;
  rawSize: number;
  streamSize: number;
  flippedSha256: string;
  boundaryConsumed: number;
}

let scratch: string;
let facts: Facts;

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "lookimage-test-"));
  facts = JSON.parse(python(PYTHON_IMAGES, scratch, VECTORS)) as Facts;
}, SLOW);

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
}, SLOW);

const image = (name: string) => join(scratch, name);

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
      expect(run.stdout).toContain(`image sum = ${facts.rawSha256}\n`);
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
      new RegExp(`^lookimage: image sum ${facts.flippedSha256} does not match sum from header ${facts.rawSha256}$`),
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
        `^lookimage: zlib stream ends after ${facts.streamSize} of the ${facts.streamSize + extra} payload bytes, leaving ${extra} trailing bytes$`,
      ),
    );
  });

  test("bytes after a stream that ends exactly at a read piece's end", async () => {
    expectFailure(
      await lookimage(image("boundary-trailing-z.img")),
      new RegExp(
        `zlib stream ends after ${facts.boundaryConsumed} of the ${facts.boundaryConsumed + 4} payload bytes, leaving 4 trailing bytes`,
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
        `^lookimage: read ${facts.rawSize} bytes of image, but header says there should be ${facts.rawSize + 128 * 1024}$`,
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
      new RegExp(`^lookimage: image size ${facts.streamSize - 1} < data size ${facts.streamSize}$`),
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
      `data size = ${facts.streamSize}`,
      "image size = 1152921504606846976",
      "target size = 1152921504606846976",
      `image sum = ${facts.rawSha256}`,
      "dataset name = rpool/ROOT/ramdisk",
      `ratio = ${(2 ** 60 / facts.streamSize).toFixed(2)}x`,
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
    expectFailure(await lookimage(scratch), /is a directory, not an image file$/);
  });
});

describe("--json", () => {
  test("the header's facts and the verification, for each vector", async () => {
    for (const name of VECTOR_NAMES) {
      const run = await lookimage("--json", join(VECTORS, `${name}.img`));
      expect(run.exitCode).toBe(0);
      const report = JSON.parse(run.stdout);
      // The text output of the existing tool carries the same facts.
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
      bytes: facts.rawSize,
      sha256: facts.flippedSha256,
      error: `image sum ${facts.flippedSha256} does not match sum from header ${facts.rawSha256}`,
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
