--[[
Oxide sled netboot: a Wireshark dissector for the protocol a sled uses to
fetch its ramdisk image from a boot server (Ethernet II, ethertype 0x1DE0,
no IP). Install and use: docs/wireshark.md. The facts it decodes are in the
project's netboot reference; the TypeScript encoder is lib/protocol/frames.ts.

Each frame is a 12-byte big-endian header (magic 0x1DE12345, type, len) and
a body of len bytes. Anything after the body is Ethernet padding: a real NIC
pads frames to 60 bytes, so it is shown as padding and never flagged.

Beyond naming the fields, the dissector flags what the sled kernel or a boot
server would reject, so a capture of a boot that stalls says why: a wrong
magic, a len the frame cannot hold or the sled drops (OFFER not 176, READ not
1032, DATA outside 8..1476, FINISHED or RESET not 0), a READ count above 128,
a dataset not NUL-terminated, and an OFFER the sled ignores.

READ slots keep their positions: slot n carries the offset of the sled's
slot n, unasked slots are zero, and count says how many are asked. Offset 0
is therefore asked only when fewer than count slots are non-zero, and then
it sits in one of the zero slots; the tree names that slot when there is
exactly one.

Filter name: oxide_netboot (e.g. oxide_netboot.type == 0x9003,
oxide_netboot.read.offset == 5120, oxide_netboot.data.offset == 1024).
--]]

local netboot = Proto("oxide_netboot", "Oxide sled netboot")

local ETHERTYPE = 0x1DE0
local MAGIC = 0x1DE12345
local HEADER_SIZE = 12
local OFFER_LEN = 176
local DATASET_SIZE = 128
local READ_SLOTS = 128
local READ_LEN = 8 + READ_SLOTS * 8
-- The sled drops DATA whose len is outside these bounds.
local DATA_MIN_LEN = 8
local DATA_MAX_LEN = 1476
-- The sled ignores an OFFER whose sizes are below 1 MiB, and only an image
-- made of whole 128 KiB batches passes its checksum.
local MIN_OFFER_SIZE = UInt64.new(1048576)
local BATCH_BYTES = UInt64.new(131072)
local ZERO = UInt64.new(0)

local HELLO, OFFER, READ, DATA, FINISHED, RESET = 0x9001, 0x9102, 0x9003, 0x9104, 0x9005, 0x9106
local TYPE_NAMES = {
    [HELLO] = "HELLO",
    [OFFER] = "OFFER",
    [READ] = "READ",
    [DATA] = "DATA",
    [FINISHED] = "FINISHED",
    [RESET] = "RESET",
}
-- The high byte of a type says who sends it.
local SENDERS = { [0x90] = "sled", [0x91] = "server" }

local f = {
    magic = ProtoField.uint32("oxide_netboot.magic", "Magic", base.HEX),
    type = ProtoField.uint32("oxide_netboot.type", "Type", base.HEX, TYPE_NAMES),
    sender = ProtoField.string("oxide_netboot.sender", "Sent by"),
    len = ProtoField.uint32("oxide_netboot.len", "Length", base.DEC),
    padding = ProtoField.bytes("oxide_netboot.padding", "Padding"),
    hello_text = ProtoField.string("oxide_netboot.hello.text", "Greeting"),
    ramdisk_size = ProtoField.uint64("oxide_netboot.offer.ramdisk_size", "Ramdisk size", base.DEC),
    image_size = ProtoField.uint64("oxide_netboot.offer.image_size", "Image size", base.DEC),
    sha256 = ProtoField.bytes("oxide_netboot.offer.sha256", "SHA-256"),
    dataset = ProtoField.string("oxide_netboot.offer.dataset", "Dataset"),
    count = ProtoField.uint64("oxide_netboot.read.count", "Count", base.DEC),
    asked = ProtoField.uint32("oxide_netboot.read.asked", "Slots asked", base.DEC),
    offset_asked = ProtoField.uint64("oxide_netboot.read.offset", "Offset asked", base.DEC),
    empty_slots = ProtoField.uint32("oxide_netboot.read.empty_slots", "Empty slots", base.DEC),
    data_offset = ProtoField.uint64("oxide_netboot.data.offset", "Offset", base.DEC),
    data_length = ProtoField.uint32("oxide_netboot.data.length", "Data length", base.DEC),
    data = ProtoField.bytes("oxide_netboot.data.bytes", "Data"),
}
netboot.fields = { f.magic, f.type, f.sender, f.len, f.padding, f.hello_text, f.ramdisk_size, f.image_size,
    f.sha256, f.dataset, f.count, f.asked, f.offset_asked, f.empty_slots, f.data_offset, f.data_length,
    f.data }

local MALFORMED, PROTOCOL, SEQUENCE = expert.group.MALFORMED, expert.group.PROTOCOL, expert.group.SEQUENCE
local ERROR, WARN, CHAT = expert.severity.ERROR, expert.severity.WARN, expert.severity.CHAT
local e = {
    short = ProtoExpert.new("oxide_netboot.short", "Frame too short for the netboot header", MALFORMED, ERROR),
    bad_magic = ProtoExpert.new("oxide_netboot.bad_magic", "Wrong magic", MALFORMED, ERROR),
    unknown_type = ProtoExpert.new("oxide_netboot.unknown_type", "Unknown frame type", MALFORMED, ERROR),
    len_beyond_frame = ProtoExpert.new("oxide_netboot.len_beyond_frame", "Length beyond the frame", MALFORMED, ERROR),
    bad_len = ProtoExpert.new("oxide_netboot.bad_len", "Length the receiver drops", MALFORMED, ERROR),
    count_too_big = ProtoExpert.new("oxide_netboot.read.count_too_big", "Count above 128 slots", MALFORMED, ERROR),
    count_mismatch = ProtoExpert.new("oxide_netboot.read.count_mismatch", "Count does not match the slots", PROTOCOL, WARN),
    dataset_unterminated = ProtoExpert.new("oxide_netboot.offer.dataset_unterminated",
        "Dataset not NUL-terminated", MALFORMED, ERROR),
    offer_ignored = ProtoExpert.new("oxide_netboot.offer.ignored", "The sled ignores this OFFER", PROTOCOL, WARN),
    not_netbootable = ProtoExpert.new("oxide_netboot.offer.not_netbootable",
        "Image size not a multiple of 128 KiB", PROTOCOL, WARN),
    end_of_image = ProtoExpert.new("oxide_netboot.data.end_of_image", "End of image", SEQUENCE, CHAT),
}
netboot.experts = { e.short, e.bad_magic, e.unknown_type, e.len_beyond_frame, e.bad_len, e.count_too_big,
    e.count_mismatch, e.dataset_unterminated, e.offer_ignored, e.not_netbootable, e.end_of_image }

-- Problems found in one frame, for the expert info and the end of the Info column.
local Problems = {}
Problems.__index = Problems

local function new_problems()
    return setmetatable({ list = {} }, Problems)
end

function Problems:flag(item, expert_field, text)
    item:add_proto_expert_info(expert_field, text)
    self.list[#self.list + 1] = text
end

function Problems:suffix()
    if #self.list == 0 then return "" end
    return " [" .. table.concat(self.list, "; ") .. "]"
end

-- "0-4, 6-89, 91-127" for a sorted list of slot numbers.
local function slot_ranges(slots)
    local parts, first, last = {}, nil, nil
    local function close_run()
        if first == nil then return end
        parts[#parts + 1] = first == last and tostring(first) or (first .. "-" .. last)
    end
    for _, n in ipairs(slots) do
        if last ~= nil and n == last + 1 then
            last = n
        else
            close_run()
            first, last = n, n
        end
    end
    close_run()
    return table.concat(parts, ", ")
end

local function check_len(len_item, problems, name, len, ok, wanted)
    if not ok then
        problems:flag(len_item, e.bad_len, string.format("%s len %d is not %s", name, len, wanted))
    end
end

local function dissect_hello(body, tree)
    local text = body:len() > 0 and body:string() or ""
    tree:add(f.hello_text, body, text, string.format("Greeting: \"%s\"", text))
    return string.format("HELLO \"%s\"", text)
end

local function dissect_offer(body, tree, len, problems, len_item)
    check_len(len_item, problems, "OFFER", len, len == OFFER_LEN, tostring(OFFER_LEN))
    local size = body:len()
    local info = "OFFER"
    if size >= 8 then
        tree:add(f.ramdisk_size, body(0, 8))
    end
    if size >= 16 then
        local item = tree:add(f.image_size, body(8, 8))
        local ramdisk, image = body(0, 8):uint64(), body(8, 8):uint64()
        info = string.format("OFFER image=%s ramdisk=%s", tostring(image), tostring(ramdisk))
        if image < MIN_OFFER_SIZE or ramdisk < MIN_OFFER_SIZE then
            problems:flag(item, e.offer_ignored, "the sled ignores sizes below 1 MiB")
        elseif ramdisk < image then
            problems:flag(item, e.offer_ignored, "the sled ignores an image larger than its ramdisk")
        end
        if image % BATCH_BYTES ~= ZERO then
            problems:flag(item, e.not_netbootable,
                "image size is not a multiple of 128 KiB: the sled's checksum will fail")
        end
    end
    if size >= 48 then
        tree:add(f.sha256, body(16, 32))
    end
    if size >= 48 + DATASET_SIZE then
        local field = body(48, DATASET_SIZE)
        -- Up to the first NUL; all 128 bytes when there is none (flagged below).
        local raw = field:raw()
        local name = raw:sub(1, (raw:find("\0", 1, true) or (DATASET_SIZE + 1)) - 1)
        local item = tree:add(f.dataset, field, name, string.format("Dataset: \"%s\"", name))
        info = info .. string.format(" dataset=\"%s\"", name)
        if field(DATASET_SIZE - 1, 1):uint() ~= 0 then
            problems:flag(item, e.dataset_unterminated, "dataset byte 127 is not 0: the sled ignores this OFFER")
        end
    end
    return info
end

local function dissect_read(body, tree, len, problems, len_item)
    check_len(len_item, problems, "READ", len, len == READ_LEN, tostring(READ_LEN))
    local size = body:len()
    if size < 8 then return "READ" end
    local count_item = tree:add(f.count, body(0, 8))
    local count = body(0, 8):uint64()
    if count > UInt64.new(READ_SLOTS) then
        problems:flag(count_item, e.count_too_big, string.format("count %s is more than %d slots", tostring(count), READ_SLOTS))
    end

    local slots_present = math.min(READ_SLOTS, math.floor((size - 8) / 8))
    if slots_present == 0 then return string.format("READ count=%s", tostring(count)) end
    local filled, empty = {}, {}
    for n = 0, slots_present - 1 do
        local offset = body(8 + n * 8, 8):uint64()
        if offset == ZERO then empty[#empty + 1] = n else filled[#filled + 1] = n end
    end
    -- Offset 0 is asked only when fewer than count slots are non-zero
    -- (netboot reference, READ point 3); it then sits in a zero slot. That
    -- takes all 128 slots to tell: with fewer (a short len, already flagged,
    -- or a capture cut by its snaplen) only the non-zero slots are shown.
    local complete = slots_present == READ_SLOTS
    local zero_asked = complete and UInt64.new(#filled) < count
    local zero_slot = (zero_asked and #empty == 1) and empty[1] or nil
    local asked = #filled + (zero_asked and 1 or 0)

    local slots_range = body(8, slots_present * 8)
    local slots_tree = tree:add(f.asked, slots_range, asked, string.format("Slots asked: %d", asked))
    local first
    for n = 0, slots_present - 1 do
        local range = body(8 + n * 8, 8)
        local offset = range:uint64()
        if offset ~= ZERO or n == zero_slot then
            first = first or offset
            slots_tree:add(f.offset_asked, range, offset, string.format("slot %d: offset %s", n, tostring(offset)))
        end
    end
    if zero_asked and zero_slot == nil then
        slots_tree:add(f.offset_asked, slots_range, ZERO,
            string.format("offset 0: in one of the %d zero slots (count %s, %d non-zero)", #empty, tostring(count), #filled))
            :set_generated()
        first = ZERO
    end
    local unused = {}
    for _, n in ipairs(empty) do
        if n ~= zero_slot then unused[#unused + 1] = n end
    end
    if #unused > 0 then
        slots_tree:add(f.empty_slots, slots_range, #unused,
            string.format("empty slots: %d (%s)", #unused, slot_ranges(unused))):set_generated()
    end
    if not complete then
        slots_tree:add(body(8, slots_present * 8), string.format("slots %d-%d not in the frame as captured",
            slots_present, READ_SLOTS - 1)):set_generated()
    elseif count <= UInt64.new(READ_SLOTS) and (UInt64.new(#filled) > count or UInt64.new(#filled + 1) < count) then
        problems:flag(count_item, e.count_mismatch,
            string.format("count %s does not match the %d non-zero slots", tostring(count), #filled))
    end
    local info = string.format("READ count=%s", tostring(count))
    if first ~= nil then info = info .. " first=" .. tostring(first) end
    return info
end

local function dissect_data(body, tree, len, problems, len_item)
    check_len(len_item, problems, "DATA", len, len >= DATA_MIN_LEN and len <= DATA_MAX_LEN,
        string.format("within %d..%d", DATA_MIN_LEN, DATA_MAX_LEN))
    local size = body:len()
    if size < 8 then return "DATA" end
    tree:add(f.data_offset, body(0, 8))
    local offset = body(0, 8):uint64()
    local data_length = len - 8
    local info = string.format("DATA offset=%s len=%d", tostring(offset), data_length)
    if data_length == 0 then
        local item = tree:add(f.data_length, body(0, 8), 0):set_generated()
        item:add_proto_expert_info(e.end_of_image, "end of image: DATA with no bytes")
        info = info .. " end of image"
    else
        tree:add(f.data_length, body(8, size - 8), data_length):set_generated()
        if size > 8 then tree:add(f.data, body(8, size - 8)) end
    end
    return info
end

local BODY_DISSECTORS = { [HELLO] = dissect_hello, [OFFER] = dissect_offer, [READ] = dissect_read, [DATA] = dissect_data }

function netboot.dissector(tvb, pinfo, root)
    pinfo.cols.protocol:set("NETBOOT")
    local captured = tvb:len()
    local tree = root:add(netboot, tvb())
    local problems = new_problems()
    if captured < HEADER_SIZE then
        problems:flag(tree, e.short, string.format("%d bytes cannot hold the %d-byte header", captured, HEADER_SIZE))
        pinfo.cols.info:set("netboot" .. problems:suffix())
        return captured
    end

    local magic_item = tree:add(f.magic, tvb(0, 4))
    if tvb(0, 4):uint() ~= MAGIC then
        problems:flag(magic_item, e.bad_magic, string.format("magic 0x%08x is not 0x%08x", tvb(0, 4):uint(), MAGIC))
    end
    local type_value = tvb(4, 4):uint()
    local name = TYPE_NAMES[type_value]
    local type_item = tree:add(f.type, tvb(4, 4))
    local sender = SENDERS[math.floor(type_value / 256)]
    if sender ~= nil then tree:add(f.sender, tvb(4, 4), sender):set_generated() end
    local len = tvb(8, 4):uint()
    local len_item = tree:add(f.len, tvb(8, 4))

    -- Decode by len; bytes beyond it are padding. A len past the end of the
    -- frame on the wire is malformed; one cut short only by the capture's
    -- snaplen is decoded as far as it was kept.
    local on_wire = tvb:reported_len() - HEADER_SIZE
    if len > on_wire then
        problems:flag(len_item, e.len_beyond_frame,
            string.format("len %d is more than the %d body bytes in the frame", len, on_wire))
    end
    local body_size = math.min(len, captured - HEADER_SIZE)
    local body = tvb(HEADER_SIZE, body_size)

    local info
    if name == nil then
        problems:flag(type_item, e.unknown_type, string.format("unknown type 0x%x", type_value))
        info = "netboot"
    else
        tree:append_text(", " .. name)
        local dissect_body = BODY_DISSECTORS[type_value]
        if dissect_body ~= nil then
            info = dissect_body(body, tree, len, problems, len_item)
        else
            check_len(len_item, problems, name, len, len == 0, "0")
            info = name
        end
    end

    local padding = captured - HEADER_SIZE - body_size
    if padding > 0 then
        tree:add(f.padding, tvb(HEADER_SIZE + body_size, padding))
            :set_text(string.format("Padding: %d bytes beyond len", padding))
    end
    pinfo.cols.info:set(info .. problems:suffix())
    return captured
end

DissectorTable.get("ethertype"):add(ETHERTYPE, netboot)
