/**
 * The picture of the code, checked in CI (`bun run lint`): no import circle,
 * imports flow one way (programs -> server / sled -> image, wire (libpcap) ->
 * protocol frames, threads -> program conventions and bytes), and every
 * package imports only what its package.json names.
 */
const FLOORS = {
  bytes: 0,
  errors: 0,
  random: 0,
  files: 1,
  progress: 1,
  cli: 1,
  threads: 1,
  protocol: 1,
  wire: 2,
  image: 2,
  netboot: 3,
  sled: 3,
  lab: 4,
};
const home = (pkg) => (pkg === "lab" ? "^lab/" : `^lib/${pkg}/`);

const climbing = Object.entries(FLOORS).map(([pkg, floor]) => {
  const above = Object.keys(FLOORS).filter((other) => other !== pkg && FLOORS[other] >= floor);
  return {
    name: `${pkg}-stays-on-its-floor`,
    comment: `${pkg} (floor ${floor}) may import only from packages on a lower floor`,
    severity: "error",
    from: { path: home(pkg) },
    to: { path: [...above.map(home), "^(apps|workers|tests|bench|scripts)/"] },
  };
});

module.exports = {
  forbidden: [
    { name: "no-circular", severity: "error", from: {}, to: { circular: true } },
    {
      name: "declared-dependencies-only",
      comment: "a package imports only what its package.json names",
      severity: "error",
      from: { path: "^(lib|lab)/" },
      to: { dependencyTypes: ["npm-no-pkg", "npm-unknown"] },
    },
    {
      name: "no-unresolvable",
      severity: "error",
      from: {},
      to: { couldNotResolve: true },
    },
    ...climbing,
  ],
  options: {
    tsConfig: { fileName: "tsconfig.json" },
    tsPreCompilationDeps: true,
    doNotFollow: { path: "node_modules" },
    exclude: { path: "^(node_modules|dist|demo-out)/" },
    combinedDependencies: false,
    enhancedResolveOptions: { exportsFields: ["exports"], conditionNames: ["import", "bun", "default"] },
  },
};
