// deploy/k8s, checked offline (no cluster here): every document parses, and the properties the
// design depends on are there. No schema validator is a dependency of the project (Debian has
// no kubeconform/kubeval; kubectl validates only against a server), so this is structural; a
// one-off check against the Kubernetes JSON schemas is described in deploy/README.md.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { repoRoot } from './support/docker';

// biome-ignore lint/suspicious/noExplicitAny: a parsed document walked by path in assertions; its schema is Kubernetes', not ours
type Obj = Record<string, any>;
const dir = path.join(repoRoot, 'deploy/k8s');

function load(file: string): Obj[] {
  const docs = parseAllDocuments(fs.readFileSync(path.join(dir, file), 'utf8'));
  for (const d of docs) expect(d.errors).toEqual([]);
  return docs.map((d) => d.toJS() as Obj).filter(Boolean);
}
const all = fs
  .readdirSync(dir)
  .filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml')
  .flatMap((f) => load(f).map((o) => ({ file: f, o })));
const find = (kind: string, name: string): Obj => {
  const r = all.find(({ o }) => o.kind === kind && o.metadata?.name === name);
  if (!r) throw new Error(`no ${kind} ${name} in deploy/k8s`);
  return r.o;
};
const agent = find('DaemonSet', 'vsm-kvm-agent');
const service = find('Deployment', 'vsm-service');
const podOf = (w: Obj) => w.spec.template.spec as Obj;
const containerOf = (w: Obj) => podOf(w).containers[0] as Obj;

describe('deploy/k8s manifests', () => {
  test('every document has apiVersion, kind, metadata.name; kustomization lists the files', () => {
    for (const { file, o } of all) {
      expect([file, typeof o.apiVersion, typeof o.kind, typeof o.metadata?.name]).toEqual([file, 'string', 'string', 'string']);
    }
    const k = load('kustomization.yaml')[0]!;
    for (const f of k.resources as string[]) expect(fs.existsSync(path.join(dir, f))).toBe(true);
    expect(k.resources).toEqual(expect.arrayContaining(['namespace.yaml', 'kvm-agent.yaml', 'vsm-service.yaml', 'network-policies.yaml']));
  });

  test('workload selectors match their pod labels; Services select those pods by a named port', () => {
    for (const w of [agent, service]) {
      const labels = w.spec.template.metadata.labels as Obj;
      for (const [k, v] of Object.entries(w.spec.selector.matchLabels as Obj)) expect(labels[k]).toBe(v);
    }
    const agentSvc = find('Service', 'vsm-kvm-agent');
    expect(agentSvc.spec.clusterIP).toBe('None'); // headless: per-agent DNS records / EndpointSlices
    expect(agentSvc.spec.selector).toEqual(agent.spec.selector.matchLabels);
    expect(podOf(agent).subdomain).toBe('vsm-kvm-agent');
    const svc = find('Service', 'vsm-service');
    expect(svc.spec.selector).toEqual(service.spec.selector.matchLabels);
    for (const [s, w] of [
      [agentSvc, agent],
      [svc, service],
    ] as const) {
      const names = (containerOf(w).ports as Obj[]).map((p) => p.name);
      for (const p of s.spec.ports as Obj[]) expect(names).toContain(p.targetPort);
    }
  });

  test('agent: KVM nodes only, /dev/kvm through a device-plugin resource, not privileged, no capability, no hostPath', () => {
    const pod = podOf(agent);
    expect(pod.nodeSelector['vsm.dev/kvm']).toBe('true');
    expect(pod.tolerations).toEqual(expect.arrayContaining([expect.objectContaining({ key: 'vsm.dev/kvm', effect: 'NoSchedule' })]));
    const c = containerOf(agent);
    expect(c.resources.limits['squat.ai/kvm']).toBe('1');
    expect(c.resources.limits.memory).toBeDefined();
    expect(c.resources.requests.cpu).toBeDefined();
    expect(c.securityContext).toMatchObject({
      privileged: false,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'] },
    });
    expect(c.securityContext.capabilities.add).toBeUndefined();
    expect(pod.hostNetwork).toBeUndefined();
    expect(pod.hostPID).toBeUndefined();
    expect((pod.volumes as Obj[]).filter((v) => v.hostPath)).toEqual([]);
    for (const p of ['startupProbe', 'readinessProbe', 'livenessProbe']) expect(c[p].grpc.port).toBe(50061);
  });

  test('service: gRPC probes on 50051, resources, non-root hardened, stateless with the agent backend, PDB', () => {
    const c = containerOf(service);
    for (const p of ['startupProbe', 'readinessProbe', 'livenessProbe']) expect(c[p].grpc).toEqual({ port: 50051 });
    expect(c.resources.requests).toMatchObject({ cpu: expect.any(String), memory: expect.any(String) });
    expect(c.resources.limits).toMatchObject({ cpu: expect.any(String), memory: expect.any(String) });
    expect(podOf(service).securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000 });
    expect(c.securityContext).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
    const env = Object.fromEntries((c.env as Obj[]).map((e) => [e.name, e.value]));
    expect(env.VSM_LISTEN).toBe('$(POD_IP):50051');
    expect(env.VSM_BACKEND).toBe('agent');
    expect(env.VSM_STATE_DIR).toBeUndefined(); // refused with --backend agent
    // Plaintext is refused on a non-loopback address unless allowed (kubelet gRPC probes are plaintext).
    expect(env.VSM_INSECURE_ALLOW_REMOTE).toBe('1');
    const agentEnv = Object.fromEntries((containerOf(agent).env as Obj[]).map((e) => [e.name, e.value]));
    expect(agentEnv).toMatchObject({ VSM_LISTEN: '$(POD_IP):50061', VSM_INSECURE_ALLOW_REMOTE: '1' });
    const pdb = find('PodDisruptionBudget', 'vsm-service');
    expect(pdb.spec.selector.matchLabels).toEqual(service.spec.selector.matchLabels);
    expect(pdb.spec.minAvailable).toBeLessThan(service.spec.replicas);
  });

  test('network policy: only vsm-service pods reach the agent, on its port; the agent reaches only etcd and DNS', () => {
    const np = find('NetworkPolicy', 'vsm-kvm-agent');
    expect(np.spec.podSelector.matchLabels).toEqual(agent.spec.selector.matchLabels);
    expect(np.spec.policyTypes).toEqual(['Ingress', 'Egress']);
    // Fleet mode (#14): its membership in etcd, and DNS for etcd's Service name.
    expect(np.spec.egress).toHaveLength(2);
    expect(np.spec.egress[0]).toEqual({
      to: [{ podSelector: { matchLabels: { 'app.kubernetes.io/name': 'vsm-etcd' } } }],
      ports: [{ port: 2379, protocol: 'TCP' }],
    });
    expect(np.spec.egress[1].ports.map((p: Obj) => p.port)).toEqual([53, 53]);
    expect(np.spec.ingress).toHaveLength(2);
    expect(np.spec.ingress[0].from).toEqual([{ podSelector: { matchLabels: service.spec.selector.matchLabels } }]);
    expect(np.spec.ingress[0].ports).toEqual([{ port: 50061, protocol: 'TCP' }]);
    // The other rule opens the metrics port only (Prometheus' namespace).
    expect(np.spec.ingress[1].ports).toEqual([{ port: 9464, protocol: 'TCP' }]);
    expect(np.spec.ingress[1].from[0].namespaceSelector).toBeDefined();
  });

  test('metrics (#15): both pods annotated for scraping on their metrics port, VSM_METRICS_LISTEN on it; PodMonitors select them', () => {
    for (const w of [agent, service]) {
      const a = w.spec.template.metadata.annotations as Obj;
      expect(a['prometheus.io/scrape']).toBe('true');
      const c = containerOf(w);
      const port = (c.ports as Obj[]).find((p) => p.name === 'metrics');
      expect(port?.containerPort).toBe(Number(a['prometheus.io/port']));
      expect((c.env as Obj[]).find((e) => e.name === 'VSM_METRICS_LISTEN')?.value).toBe(`$(POD_IP):${port?.containerPort}`);
    }
    const monitors = load('monitoring.yaml');
    for (const w of [agent, service]) {
      const m = monitors.find((x) => x.metadata.name === w.metadata.name)!;
      expect(m.kind).toBe('PodMonitor');
      expect(m.spec.selector.matchLabels).toEqual(w.spec.selector.matchLabels);
      expect(m.spec.podMetricsEndpoints[0].port).toBe('metrics');
    }
  });

  test('fleet (#14): a 3-member etcd StatefulSet with a PDB keeping quorum; agents advertise their node address (status.hostIP, hostPort) under the node name; both use its endpoints', () => {
    const etcd = find('StatefulSet', 'vsm-etcd');
    expect(etcd.spec.replicas).toBe(3);
    expect(find('Service', 'vsm-etcd').spec.clusterIP).toBe('None');
    expect(find('PodDisruptionBudget', 'vsm-etcd').spec.minAvailable).toBe(2);
    const env = (w: Obj) => Object.fromEntries((containerOf(w).env as Obj[]).map((e) => [e.name, e.value]));
    const endpoints = 'http://vsm-etcd.vsm.svc.cluster.local:2379';
    expect(env(agent)).toMatchObject({ VSM_ETCD_ENDPOINTS: endpoints, VSM_ADVERTISE: '$(HOST_IP):50061', VSM_AGENT_NAME: '$(NODE_NAME)' });
    const hostIp = (containerOf(agent).env as Obj[]).find((e) => e.name === 'HOST_IP');
    expect(hostIp?.valueFrom).toEqual({ fieldRef: { fieldPath: 'status.hostIP' } });
    // The advertised port is published on the node and is the port the agent listens on (in the pod).
    const grpcPort = (containerOf(agent).ports as Obj[]).find((p) => p.name === 'grpc');
    expect(grpcPort).toMatchObject({ containerPort: 50061, hostPort: 50061 });
    expect(env(agent).VSM_LISTEN).toBe('$(POD_IP):50061');
    // Env vars referenced as $(X) must be defined before they are used (Kubernetes expands in order).
    const names = (containerOf(agent).env as Obj[]).map((e) => e.name as string);
    expect(names.indexOf('HOST_IP')).toBeLessThan(names.indexOf('VSM_ADVERTISE'));
    expect(env(service)).toMatchObject({ VSM_ETCD_ENDPOINTS: endpoints });
    expect(env(service).VSM_AGENTS).toBeUndefined(); // --agent and --etcd-endpoints exclude each other
    const np = find('NetworkPolicy', 'vsm-etcd');
    expect(np.spec.ingress[0].ports).toEqual([{ port: 2379, protocol: 'TCP' }]);
  });

  test('kubectl kustomize renders the set, when kubectl is installed', () => {
    let out: string;
    try {
      out = execFileSync('kubectl', ['kustomize', dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        console.log('[k8s-manifests.test] kubectl not installed: kustomize rendering not checked');
        return;
      }
      throw e;
    }
    const objs = parseAllDocuments(out).map((d) => d.toJS() as Obj);
    expect(objs.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual([
      'DaemonSet/vsm-kvm-agent',
      'Deployment/vsm-service',
      'Namespace/vsm',
      'NetworkPolicy/vsm-etcd',
      'NetworkPolicy/vsm-kvm-agent',
      'NetworkPolicy/vsm-service',
      'PodDisruptionBudget/vsm-etcd',
      'PodDisruptionBudget/vsm-service',
      'Service/vsm-etcd',
      'Service/vsm-kvm-agent',
      'Service/vsm-service',
      'StatefulSet/vsm-etcd',
    ]);
    for (const o of objs) if (o.kind !== 'Namespace') expect(o.metadata.namespace).toBe('vsm');
    const images = objs.flatMap((o) => (o.spec?.template?.spec?.containers ?? []).map((c: Obj) => c.image));
    expect(images.sort()).toEqual(['gcr.io/etcd-development/etcd:v3.5.17', 'vsm-kvm-agent:local', 'vsm-service:local']);
  });
});
