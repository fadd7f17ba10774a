// Agent manifests: the TypeScript (or JavaScript) file the platform writes,
//
//   export const manifest = {
//     tools: [{ name: "send_email", connector: "google_workspace", scopes: ["gmail.send"],
//               http: ["POST /gmail/v1/users/me/messages/send"] }],
//   };
//
// read WITHOUT executing it: the TypeScript compiler parses the file, and
// only literal objects, arrays and strings are accepted (anything else is an
// error naming its line and column). manifestToPolicyJson() gives the JSON the
// daemon's policy imports (docs/policy.md, `manifests`).

import { open } from 'node:fs/promises';

import ts from 'typescript';

export interface ManifestTool {
  name: string;
  connector: string;
  scopes: string[];
  /**
   * The tool's proxy limits: each entry "METHOD /path-prefix" (METHOD may be
   * "*"). A proxied call for the tool must match one.
   */
  http?: string[];
}

export interface Manifest {
  tools: ManifestTool[];
}

/** A manifest that cannot be read, is not literal, or is not valid. */
export class ManifestError extends Error {
  /** Where, when known: the file, and a 1-based line and column. */
  readonly file: string | null;
  readonly line: number | null;
  readonly column: number | null;

  constructor(message: string, where: Position | null = null) {
    super(where ? `${where.file}:${where.line}:${where.column}: ${message}` : message);
    this.name = 'ManifestError';
    this.file = where?.file ?? null;
    this.line = where?.line ?? null;
    this.column = where?.column ?? null;
  }
}

interface Position {
  file: string;
  line: number;
  column: number;
}

/** The largest manifest file read, in bytes. */
export const MAX_MANIFEST_BYTES = 1 << 20;

/**
 * What is wrong with one `http` entry, or null. The form the daemon's policy
 * accepts (policy::CheckHttpPath, docs/proxy.md): "METHOD /path-prefix",
 * METHOD upper-case letters or "*", one space, and a canonical path: visible
 * ASCII without '\\', ';', '?' or '#', no empty, "." or ".." segment (a final
 * "/" is fine), and percent-encoding only where needed and only once: no
 * encoded '/', '\\', '.', '%', NUL, unreserved character or overlong UTF-8
 * lead byte (0xC0, 0xC1).
 */
function httpRuleProblem(entry: string): string | null {
  const space = entry.indexOf(' ');
  if (space < 0) return 'it has no space between METHOD and path';
  const method = entry.slice(0, space);
  const path = entry.slice(space + 1);
  if (method !== '*' && !/^[A-Z]+$/.test(method)) return 'the method must be upper-case letters (GET, POST…) or *';
  if (!path.startsWith('/')) return 'the path must start with "/"';
  if (!/^[\x21-\x7e]*$/.test(path) || /[\\;?#]/.test(path)) {
    return 'the path may hold only visible ASCII, without "\\", ";", "?" or "#"';
  }
  const segments = path.slice(1).split('/');
  if (segments.some((segment, i) => (segment === '' && i < segments.length - 1) || segment === '.' || segment === '..')) {
    return 'the path must not have an empty, "." or ".." segment';
  }
  for (let i = path.indexOf('%'); i >= 0; i = path.indexOf('%', i + 1)) {
    const code = path.slice(i + 1, i + 3);
    if (!/^[0-9a-fA-F]{2}$/.test(code)) return 'the path has a "%" that is not a percent-encoding';
    const byte = parseInt(code, 16);
    const char = String.fromCharCode(byte);
    if (/[A-Za-z0-9\-_~/\\.%]/.test(char) || byte === 0 || byte === 0xc0 || byte === 0xc1) {
      return 'the path percent-encodes what must not be ("/", "\\", ".", "%", NUL, an unreserved character or an overlong UTF-8 byte)';
    }
  }
  return null;
}

type Key = string | number;
// Where each literal object/array and each of its members came from.
type Positions = WeakMap<object, { self: Position; members: Map<Key, Position> }>;

function scriptKind(fileName: string): ts.ScriptKind {
  if (/\.[cm]?js$/.test(fileName)) return ts.ScriptKind.JS;
  if (/\.[cm]?ts$/.test(fileName)) return ts.ScriptKind.TS;
  throw new ManifestError(`${fileName}: a manifest is a .ts, .mts, .cts, .js, .mjs or .cjs file`);
}

function positionOf(source: ts.SourceFile, node: ts.Node): Position {
  const { line, character } = source.getLineAndCharacterOfPosition(node.getStart(source));
  return { file: source.fileName, line: line + 1, column: character + 1 };
}

function syntaxErrors(source: ts.SourceFile): readonly ts.Diagnostic[] {
  // Parse only: a program of this one file, with no library and no imports resolved.
  const host: ts.CompilerHost = {
    getSourceFile: (name) => (name === source.fileName ? source : undefined),
    getDefaultLibFileName: () => 'lib.d.ts',
    writeFile: () => undefined,
    getCurrentDirectory: () => '/',
    getCanonicalFileName: (name) => name,
    useCaseSensitiveFileNames: () => true,
    getNewLine: () => '\n',
    fileExists: (name) => name === source.fileName,
    readFile: () => undefined,
  };
  const program = ts.createProgram({
    rootNames: [source.fileName],
    options: { noLib: true, noResolve: true, allowJs: true, noEmit: true },
    host,
  });
  return program.getSyntacticDiagnostics(source);
}

// What a refused expression is, in an error message.
function describe(node: ts.Node): string {
  switch (node.kind) {
    case ts.SyntaxKind.NumericLiteral:
    case ts.SyntaxKind.BigIntLiteral:
      return 'a number';
    case ts.SyntaxKind.TrueKeyword:
    case ts.SyntaxKind.FalseKeyword:
      return 'a boolean';
    case ts.SyntaxKind.NullKeyword:
      return 'null';
    case ts.SyntaxKind.Identifier:
      return 'a name';
    default:
      return ts.SyntaxKind[node.kind] ?? 'an expression';
  }
}

class LiteralReader {
  readonly positions: Positions = new WeakMap();

  constructor(private readonly source: ts.SourceFile) {}

  private refuse(node: ts.Node, what: string): never {
    throw new ManifestError(
      `${what} is not allowed: a manifest holds only literal objects, arrays and strings`,
      positionOf(this.source, node),
    );
  }

  read(node: ts.Expression): unknown {
    if (ts.isParenthesizedExpression(node)) return this.read(node.expression);
    if (ts.isAsExpression(node) && ts.isTypeReferenceNode(node.type)
      && ts.isIdentifier(node.type.typeName) && node.type.typeName.text === 'const' && !node.type.typeArguments) {
      return this.read(node.expression);
    }
    if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)) return node.text;
    if (ts.isArrayLiteralExpression(node)) {
      const items: unknown[] = [];
      const members = new Map<Key, Position>();
      node.elements.forEach((element, index) => {
        if (ts.isSpreadElement(element)) this.refuse(element, 'a spread element');
        if (ts.isOmittedExpression(element)) this.refuse(node, 'an array with a hole');
        members.set(index, positionOf(this.source, element));
        items.push(this.read(element));
      });
      this.positions.set(items, { self: positionOf(this.source, node), members });
      return items;
    }
    if (ts.isObjectLiteralExpression(node)) {
      const object: Record<string, unknown> = {};
      const members = new Map<Key, Position>();
      for (const property of node.properties) {
        if (!ts.isPropertyAssignment(property)) {
          this.refuse(property, ts.isShorthandPropertyAssignment(property) ? 'a shorthand property'
            : ts.isSpreadAssignment(property) ? 'a spread property' : 'a method or accessor');
        }
        const { name } = property;
        let key: string;
        if (ts.isIdentifier(name) || ts.isStringLiteral(name) || ts.isNoSubstitutionTemplateLiteral(name)) {
          key = name.text;
        } else {
          this.refuse(name, 'a computed or numeric property name');
        }
        if (Object.prototype.hasOwnProperty.call(object, key)) this.refuse(name, `a second "${key}" property`);
        members.set(key, positionOf(this.source, property.initializer));
        // defineProperty: a "__proto__" key is data, never the prototype.
        Object.defineProperty(object, key, {
          value: this.read(property.initializer), enumerable: true, writable: true, configurable: true,
        });
      }
      this.positions.set(object, { self: positionOf(this.source, node), members });
      return object;
    }
    return this.refuse(node, `${describe(node)} "${node.getText(this.source).slice(0, 40)}"`);
  }
}

/**
 * Parses a manifest's source text without running it. `fileName` names it in
 * errors and decides TypeScript or JavaScript by its extension.
 */
export function parseManifest(sourceText: string, fileName = 'manifest.ts'): Manifest {
  const source = ts.createSourceFile(fileName, sourceText, ts.ScriptTarget.Latest, true, scriptKind(fileName));
  const [syntax] = syntaxErrors(source);
  if (syntax) {
    const at = syntax.start === undefined ? null : source.getLineAndCharacterOfPosition(syntax.start);
    throw new ManifestError(
      ts.flattenDiagnosticMessageText(syntax.messageText, '\n'),
      at ? { file: fileName, line: at.line + 1, column: at.character + 1 } : null,
    );
  }
  const reader = new LiteralReader(source);
  let manifest: { value: unknown; at: Position } | null = null;
  for (const statement of source.statements) {
    const exported = ts.isVariableStatement(statement)
      && (statement.modifiers ?? []).some((m) => m.kind === ts.SyntaxKind.ExportKeyword)
      && (statement.modifiers ?? []).length === 1
      && (statement.declarationList.flags & ts.NodeFlags.Const) !== 0;
    if (!exported) {
      throw new ManifestError(
        'only "export const manifest = { … }" (and other exported literal constants) may appear in a manifest',
        positionOf(source, statement),
      );
    }
    for (const declaration of statement.declarationList.declarations) {
      if (!ts.isIdentifier(declaration.name) || !declaration.initializer) {
        throw new ManifestError('an export must be "NAME = literal"', positionOf(source, declaration));
      }
      if (declaration.type) {
        throw new ManifestError('a type annotation is not allowed here (use no annotation or "as const")', positionOf(source, declaration.type));
      }
      const value = reader.read(declaration.initializer);
      if (declaration.name.text === 'manifest') manifest = { value, at: positionOf(source, declaration.initializer) };
    }
  }
  if (!manifest) throw new ManifestError(`${fileName}: no "export const manifest"`);
  return check(manifest.value, manifest.at, reader.positions);
}

/** Reads and parses a manifest file; see parseManifest. */
export async function loadManifest(path: string): Promise<Manifest> {
  scriptKind(path);
  let text: string;
  try {
    const file = await open(path, 'r');
    try {
      const { size } = await file.stat();
      if (size > MAX_MANIFEST_BYTES) throw new ManifestError(`${path}: larger than ${MAX_MANIFEST_BYTES} bytes`);
      text = await file.readFile('utf8');
    } finally {
      await file.close();
    }
  } catch (e) {
    if (e instanceof ManifestError) throw e;
    throw new ManifestError(`${path}: cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseManifest(text, path);
}

/** Checks a manifest built in code (or parsed JSON) and returns a clean copy. */
export function validateManifest(value: unknown): Manifest {
  return check(value, null, new WeakMap());
}

function check(value: unknown, at: Position | null, positions: Positions): Manifest {
  const where = (container: unknown, key: Key): Position | null => {
    if (typeof container !== 'object' || container === null) return at;
    const info = positions.get(container);
    return info?.members.get(key) ?? info?.self ?? at;
  };
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  if (!isObject(value)) throw new ManifestError('the manifest must be an object', at);
  if (!Object.prototype.hasOwnProperty.call(value, 'tools') || !Array.isArray(value.tools)) {
    throw new ManifestError('the manifest needs "tools", an array', positions.get(value)?.self ?? at);
  }
  const tools: unknown[] = value.tools;
  const seen = new Set<string>();
  const out: ManifestTool[] = tools.map((tool, index) => {
    const path = `tools[${index}]`;
    if (!isObject(tool)) throw new ManifestError(`${path} must be an object`, where(tools, index));
    const text = (key: 'name' | 'connector'): string => {
      const v = tool[key];
      if (typeof v !== 'string' || v === '') {
        throw new ManifestError(`${path}.${key} must be a non-empty string`, where(tool, key));
      }
      return v;
    };
    // `problem` says what is wrong with an entry, or null.
    const strings = (key: 'scopes' | 'http', problem: (s: string) => string | null, item: string): string[] => {
      const list = tool[key];
      if (!Array.isArray(list) || list.length === 0) {
        // An empty http list reads as "may call nothing" but the daemon treats it as no limit at all.
        const hint = key === 'http' && Array.isArray(list) ? ' (an empty list would mean no limit: omit http for that)' : '';
        throw new ManifestError(`${path}.${key} must be a non-empty array of strings, each ${item}${hint}`, where(tool, key));
      }
      return list.map((entry: unknown, i: number) => {
        const why = typeof entry === 'string' ? problem(entry) : 'not a string';
        if (why !== null) throw new ManifestError(`${path}.${key}[${i}] must be ${item}: ${why}`, where(list, i));
        return entry as string;
      });
    };
    const name = text('name');
    if (seen.has(name)) throw new ManifestError(`${path}: a second tool named "${name}"`, where(tool, 'name'));
    seen.add(name);
    const result: ManifestTool = {
      name,
      connector: text('connector'),
      scopes: strings('scopes', (s) => (s === '' ? 'empty' : /\s/.test(s) ? 'it has whitespace' : null),
        'a non-empty string without whitespace'),
    };
    if (Object.prototype.hasOwnProperty.call(tool, 'http')) {
      result.http = strings('http', httpRuleProblem, '"METHOD /path-prefix"');
    }
    return result;
  });
  return { tools: out };
}

/** The JSON text the daemon's policy imports: {"tools":[{"name","connector","scopes","http"?}]}. */
export function manifestToPolicyJson(manifest: Manifest): string {
  const { tools } = validateManifest(manifest);
  return JSON.stringify({
    tools: tools.map((t) => ({
      name: t.name,
      connector: t.connector,
      scopes: t.scopes,
      ...(t.http ? { http: t.http } : {}),
    })),
  });
}
