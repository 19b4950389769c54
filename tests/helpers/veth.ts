/** The veth helpers live in lib/veth.ts (the demo uses them too); tests import them from here. */
export * from "../../lib/veth.ts";
