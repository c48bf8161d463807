// Evaluates recorded AWS requests against the roles the template gives their
// principals, with a real IAM policy evaluator (@cloud-copilot/iam-simulate):
// the check moto cannot make.
//
//   node iam-check.mjs check ROLES.json RECORDS.jsonl
//     Every record ({"principal", "action", "resource", "context"?, "call"})
//     must be allowed by its principal's identity policies. Prints each
//     denial (principal, action, resource, call) and exits 1 if any.
//   node iam-check.mjs report ROLES.json RECORDS.jsonl...
//     Per principal: the actions exercised, and the actions granted that no
//     record used (so least privilege stays visible).
//
// ROLES.json is roles.py's output. Managed policies (the Lambda basic
// execution role, for logs) are not evaluated: the records hold no logging
// requests, and leaving a policy out can only deny, never allow.

import { readFileSync } from 'node:fs'
import { runSimulation } from '@cloud-copilot/iam-simulate'

function records(paths) {
  const seen = new Map()
  for (const path of paths) {
    for (const line of readFileSync(path, 'utf8').split('\n')) {
      if (!line.trim()) continue
      const r = JSON.parse(line)
      const key = JSON.stringify([r.principal, r.action, r.resource, r.context ?? {}])
      if (!seen.has(key)) seen.set(key, r)
    }
  }
  return [...seen.values()]
}

function accountOf(arn, fallback) {
  const parts = arn.split(':')
  return parts.length > 4 && /^\d{12}$/.test(parts[4]) ? parts[4] : fallback
}

// A KMS key always has a key policy, and IAM policies count only where it
// lets them: this is the default key policy, which does. (docs/aws.md's first
// deploy checklist asks for it, or for a key policy naming the roles.)
function defaultKeyPolicy(account) {
  return {
    Version: '2012-10-17',
    Statement: [
      {
        Sid: 'Enable IAM User Permissions',
        Effect: 'Allow',
        Principal: { AWS: `arn:aws:iam::${account}:root` },
        Action: 'kms:*',
        Resource: '*',
      },
    ],
  }
}

async function allowed(role, record, account) {
  const keyAccount = accountOf(record.resource, account)
  const simulation = {
    ...(record.action.startsWith('kms:') ? { resourcePolicy: defaultKeyPolicy(keyAccount) } : {}),
    identityPolicies: role.policies.map((p) => ({
      name: p.name,
      policy: { Version: '2012-10-17', ...p.document },
    })),
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    request: {
      action: record.action,
      principal: role.roleArn,
      resource: {
        resource: record.resource,
        accountId: accountOf(record.resource, account),
      },
      contextVariables: record.context ?? {},
    },
  }
  const result = await runSimulation(simulation, {})
  if (result.resultType === 'error') {
    return { ok: false, why: `the evaluator refused the request: ${JSON.stringify(result.errors)}` }
  }
  return { ok: result.overallResult === 'Allowed', why: result.overallResult }
}

function accountOfRoles(roles) {
  for (const role of Object.values(roles)) {
    const m = role.roleArn.match(/^arn:aws:iam::(\d{12}):/)
    if (m) return m[1]
  }
  return '123456789012'
}

async function check(rolesPath, recordsPath) {
  const roles = JSON.parse(readFileSync(rolesPath, 'utf8'))
  const account = accountOfRoles(roles)
  let denied = 0
  const list = records([recordsPath])
  for (const r of list) {
    const role = roles[r.principal]
    if (!role) {
      console.log(`DENIED ${r.principal}: no such function or state machine in the template (${r.action} on ${r.resource})`)
      denied++
      continue
    }
    const verdict = await allowed(role, r, account)
    if (!verdict.ok) {
      const context = r.context && Object.keys(r.context).length ? ` with ${JSON.stringify(r.context)}` : ''
      console.log(`DENIED ${r.principal} (${role.role}): ${r.action} on ${r.resource}${context}, for ${r.call}: ${verdict.why}`)
      denied++
    }
  }
  console.log(`${list.length} distinct requests checked, ${denied} denied`)
  return denied === 0 ? 0 : 1
}

function granted(role) {
  const actions = new Set()
  for (const p of role.policies) {
    for (const s of [p.document.Statement].flat()) {
      if (s.Effect !== 'Allow') continue
      for (const a of [s.Action].flat()) actions.add(a)
    }
  }
  return actions
}

function matches(pattern, action) {
  const re = new RegExp('^' + pattern.split('*').map((s) => s.replace(/[.?+^$()[\]{}|\\]/g, '\\$&')).join('.*') + '$', 'i')
  return re.test(action)
}

function report(rolesPath, recordPaths) {
  const roles = JSON.parse(readFileSync(rolesPath, 'utf8'))
  const list = records(recordPaths)
  for (const [principal, role] of Object.entries(roles).sort()) {
    const used = new Set(list.filter((r) => r.principal === principal).map((r) => r.action))
    const unused = [...granted(role)].filter((g) => ![...used].some((u) => matches(g, u))).sort()
    console.log(`${principal}`)
    console.log(`  exercised: ${[...used].sort().join(', ') || '(none)'}`)
    console.log(`  granted, never used by a test: ${unused.join(', ') || '(none)'}`)
  }
  return 0
}

const [mode, rolesPath, ...rest] = process.argv.slice(2)
let code
if (mode === 'check' && rolesPath && rest.length === 1) {
  code = await check(rolesPath, rest[0])
} else if (mode === 'report' && rolesPath && rest.length >= 1) {
  code = report(rolesPath, rest)
} else {
  console.error('usage: iam-check.mjs check ROLES.json RECORDS.jsonl | report ROLES.json RECORDS.jsonl...')
  code = 2
}
process.exit(code)
