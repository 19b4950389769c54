/**
 * Shell completion for the programs, from their own yargs definitions: the
 * script a shell sources only asks the program itself, as
 * `PROGRAM --get-yargs-completions WORD...`, which yargs answers from the
 * options the program declares (so a new option completes with no change
 * here). The scripts are ours; yargs' protocol is that one hidden option.
 *
 * yargs answers in zsh's `name:description` form when ZSH_NAME or SHELL names
 * zsh, and with bare names otherwise; each script sets both for the program
 * it runs, so the answer fits the shell that asks, whatever the login shell is.
 */

/** The shells a completion script can be printed for. */
export const COMPLETION_SHELLS = ["bash", "zsh"] as const;
export type CompletionShell = (typeof COMPLETION_SHELLS)[number];

/**
 * The shell to print a script for when none is named: zsh when $SHELL is
 * zsh, bash otherwise.
 *
 * @example defaultShell({ SHELL: "/usr/bin/zsh" }) // "zsh"
 */
export function defaultShell(env: Record<string, string | undefined> = process.env): CompletionShell {
  return env.SHELL?.endsWith("zsh") ? "zsh" : "bash";
}

/** A shell function name made of the program name (a name like ramdisk-tools has a dash). */
function functionName(program: string): string {
  return `_${program.replace(/[^A-Za-z0-9_]/g, "_")}_complete`;
}

/**
 * The completion script for `program` in `shell`, to source from the shell's
 * startup file.
 *
 * @example console.log(completionScript("mkimage", "bash")); // complete -o default -F _mkimage_complete mkimage ...
 */
export function completionScript(program: string, shell: CompletionShell): string {
  const fn = functionName(program);
  if (shell === "zsh") {
    return `#compdef ${program}
# zsh completion for ${program}, printed by \`${program} --completion zsh\`.
# Load it with: source <(${program} --completion zsh)   (after compinit)
${fn}() {
  local -a answers
  # words[1] is the program; yargs wants every word up to the cursor.
  answers=("\${(@f)$(ZSH_NAME=zsh SHELL=zsh ${program} --get-yargs-completions "\${(@)words[1,CURRENT]}" 2>/dev/null)}")
  if (( \${#answers[@]} > 0 )) && [[ -n "\${answers[1]}" ]]; then
    _describe '${program} options' answers
  else
    _files
  fi
}
compdef ${fn} ${program}
`;
  }
  return `# bash completion for ${program}, printed by \`${program} --completion bash\`.
# Load it with: source <(${program} --completion bash)
${fn}() {
  local IFS=$'\\n'
  local answers
  # COMP_WORDS[0] is the program; yargs wants every word up to the cursor.
  answers=$(ZSH_NAME= SHELL=bash ${program} --get-yargs-completions "\${COMP_WORDS[@]:0:COMP_CWORD+1}" 2>/dev/null)
  COMPREPLY=($(compgen -W "$answers" -- "\${COMP_WORDS[COMP_CWORD]}"))
}
complete -o bashdefault -o default -F ${fn} ${program}
`;
}
