/**
 * The picture of the code, checked in CI (`bun run lint`). Imports run one
 * way: programs (apps/) and thread entry points (workers/) at the top, then
 * the packages of lib/ floor by floor (FLOORS: a package imports only from
 * lower floors), lab/ beside the programs for tests, benchmarks and the demo.
 * No import circle; every package imports only what its package.json names,
 * only what the other package's `exports` declare, and only by its name
 * (`@ramdisk-tools/NAME/FILE.ts`), never by a relative path into it. Tests
 * alone may reach a package's inner modules by path, to pin them down.
 *
 * Each rule is checked to fire on a planted violation: tests/lint/rules.test.ts.
 * What the import graph cannot show (a path built in a string, as a thread's
 * entry point is) scripts/check-one-way.ts checks.
 */
const FLOORS = {
  bytes: 0,
  errors: 0,
  random: 0,
  files: 1,
  progress: 1,
  threads: 1,
  protocol: 1,
  cli: 1,
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

const byPathInto = Object.keys(FLOORS).map((pkg) => ({
  name: `${pkg}-only-by-its-name`,
  comment: `code outside ${pkg} (tests aside) imports it as @ramdisk-tools/${pkg}/..., through its declared exports`,
  severity: "error",
  from: { path: "^(apps|workers|bench|scripts|lab|lib)/", pathNot: home(pkg) },
  to: { path: home(pkg), dependencyTypes: ["local"], dependencyTypesNot: ["aliased-workspace"] },
}));

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
      name: "declared-surface-only",
      comment: "a package's module is imported only if its package.json exports declare it",
      severity: "error",
      from: {},
      to: { couldNotResolve: true, path: "^@ramdisk-tools/" },
    },
    {
      name: "no-unresolvable",
      severity: "error",
      from: {},
      to: { couldNotResolve: true, pathNot: "^@ramdisk-tools/" },
    },
    ...climbing,
    ...byPathInto,
  ],
  options: {
    tsConfig: { fileName: "tsconfig.json" },
    tsPreCompilationDeps: true,
    doNotFollow: { path: "node_modules" },
    exclude: { path: "^(dist|demo-out)/" },
    combinedDependencies: false,
    enhancedResolveOptions: { exportsFields: ["exports"], conditionNames: ["import", "bun", "default"] },
  },
};
