/**
 * lookimage as its tests run it: `bun apps/lookimage.ts` as a process, what a
 * refusal must look like on its stderr (lib/cli/conventions.ts runMain), and
 * the images its tests read, made by python3 (struct for the header, zlib as
 * an independent compressor, hashlib for the checksum), not by our encoder.
 */

import { afterAll, beforeAll, expect } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ProgramRun, python, runProgram, VECTORS } from "./common.ts";

/**
 * Every test runs lookimage as a process, some several times, and the setup runs python3 over
 * tens of MiB, on two cores shared with other work: room, but no assertion on time.
 */
export const LOOKIMAGE_TIMEOUT_MS = 60_000;

/** The existing tools' vectors (tests/vectors), by name. */
export const VECTOR_NAMES = ["pool-1m", "pool-1m-z", "pool-odd", "pool-odd-z"];

/**
 * Run `bun apps/lookimage.ts ARGS...` to its end.
 *
 * @example const shown = await lookimage("pool.img");
 */
export function lookimage(...args: string[]): Promise<ProgramRun> {
  return runProgram("lookimage", args);
}

/**
 * A failure: exit 1 and one line on stderr besides warnings about the header,
 * `lookimage: ` and the reason, no stack trace.
 *
 * @example expectFailure(await lookimage("short.img"), /shorter than/);
 */
export function expectFailure(run: ProgramRun, reason: RegExp) {
  expect(run.exitCode).toBe(1);
  const lines = run.stderr
    .trimEnd()
    .split("\n")
    .filter((line) => !line.startsWith("lookimage: warning: "));
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^lookimage: /);
  expect(lines[0]).toMatch(reason);
  expect(run.stderr).not.toMatch(/\bat .*\.ts:\d+/);
}

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

/** What PYTHON_IMAGES says about the images it made. */
export interface Facts {
  rawSha256: string;
  rawSize: number;
  streamSize: number;
  flippedSha256: string;
  boundaryConsumed: number;
}

/**
 * The images PYTHON_IMAGES makes, in a scratch directory made before the
 * calling test file's tests and removed after them: `dir` and `facts` once
 * they are made.
 *
 * @example const cases = lookimageCases(); test("...", async () => expectFailure(await lookimage(join(cases.dir, "bad-magic.img")), /magic/));
 */
export function lookimageCases() {
  const cases = { dir: "", facts: {} as Facts };
  beforeAll(async () => {
    cases.dir = await mkdtemp(join(tmpdir(), "lookimage-test-"));
    cases.facts = JSON.parse(python(PYTHON_IMAGES, cases.dir, VECTORS)) as Facts;
  }, LOOKIMAGE_TIMEOUT_MS);
  afterAll(async () => {
    if (cases.dir) await rm(cases.dir, { recursive: true, force: true });
  }, LOOKIMAGE_TIMEOUT_MS);
  return cases;
}
