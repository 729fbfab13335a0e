import { escapeXml, logScale, niceStep, renderSvg } from '../src/lib/svg';
import { latencyFigure, rateFigure, skippedFigure } from './fixtures';

/** Minimal XML well-formedness check: balanced tags, quoted attributes, no duplicate attributes, valid entities. */
function checkXml(xml: string): { root: string; elements: number } {
  let s = xml.replace(/^<\?xml[^?]*\?>\s*/, '');
  const stack: string[] = [];
  let root = '';
  let elements = 0;
  const tag = /^<(\/?)([A-Za-z_][\w:.-]*)((?:\s+[A-Za-z_][\w:.-]*\s*=\s*"[^"<]*")*)\s*(\/?)>/;
  const text = /^[^<]*/;
  while (s.length) {
    const t = (text.exec(s) as RegExpExecArray)[0];
    const bad = t.match(/&(?!(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);)/);
    if (bad) throw new Error(`raw & in text: ${t.slice(0, 60)}`);
    if (t.trim() && stack.length === 0) throw new Error('text outside root element');
    s = s.slice(t.length);
    if (!s.length) break;
    const m = tag.exec(s);
    if (!m) throw new Error(`malformed tag at: ${s.slice(0, 80)}`);
    const [whole, closing, name, attrs, selfClosing] = m as unknown as [string, string, string, string, string];
    const names = [...attrs.matchAll(/([A-Za-z_][\w:.-]*)\s*=/g)].map((a) => a[1]);
    if (new Set(names).size !== names.length) throw new Error(`duplicate attribute in <${name}>`);
    for (const v of attrs.matchAll(/"([^"]*)"/g))
      if (/&(?!(amp|lt|gt|quot|apos|#\d+);)/.test(v[1] as string)) throw new Error(`raw & in attribute of <${name}>`);
    if (closing) {
      if (stack.pop() !== name) throw new Error(`mismatched </${name}>`);
    } else {
      elements++;
      if (!root) root = name;
      else if (stack.length === 0) throw new Error('second root element');
      if (!selfClosing) stack.push(name);
    }
    s = s.slice(whole.length);
  }
  if (stack.length) throw new Error(`unclosed <${stack.join('><')}>`);
  return { root, elements };
}

describe('svg writer', () => {
  const figures = [
    latencyFigure('raw.unary.64B', [400, 420, 390]),
    latencyFigure('raw.bidi.64B', [90, 100]),
    skippedFigure('kvm.exit.<rdmsr>', 'no /dev/kvm & no "luck"'),
    rateFigure('raw.stream.64B', [88000, 82000, 100000]),
    rateFigure('raw.stream.4KiB.throughput', [112, 97, 119], 'MiB/s'),
  ];

  test('is well-formed XML with an <svg> root', () => {
    const svg = renderSvg(figures, { title: 'bench <quick> & co', subtitle: "it's", footer: 'f' });
    const r = checkXml(svg);
    expect(r.root).toBe('svg');
    expect(svg).toContain('xmlns="http://www.w3.org/2000/svg"');
    expect(svg).toContain('bench &lt;quick&gt; &amp; co');
  });

  test('has exactly one series per figure, in order, skipped ones included with their reason', () => {
    const svg = renderSvg(figures, { title: 't' });
    const ids = [...svg.matchAll(/<g class="series" data-figure="([^"]*)"/g)].map((m) => m[1]);
    expect(ids).toEqual(['raw.unary.64B', 'raw.bidi.64B', 'kvm.exit.&lt;rdmsr&gt;', 'raw.stream.64B', 'raw.stream.4KiB.throughput']);
    expect(svg).toContain('skipped: no /dev/kvm &amp; no &quot;luck&quot;');
    // latency boxes for the two measured latency figures, rate dots for the two rates
    expect(svg.match(/class="box"/g)).toHaveLength(2);
    expect(svg.match(/class="median"/g)).toHaveLength(2);
    // one panel for latency and one per rate unit
    expect(svg.match(/<g class="panel"/g)).toHaveLength(3);
  });

  test('no figures still renders a valid document', () => {
    const svg = renderSvg([], { title: 'empty' });
    expect(checkXml(svg).root).toBe('svg');
    expect(svg).toContain('no figures declared');
  });

  test('all figures skipped: rows but no axis', () => {
    const svg = renderSvg([skippedFigure('a', 'x'), skippedFigure('b', 'y', 'rate')], { title: 't' });
    checkXml(svg);
    expect(svg.match(/class="series"/g)).toHaveLength(2);
  });

  test('log scale maps 1-2-5 bounds onto the plot and is monotonic', () => {
    const s = logScale(28000, 101000, 0, 100);
    expect(s.lo).toBe(20000);
    expect(s.hi).toBe(200000);
    expect(s.x(20000)).toBeCloseTo(0);
    expect(s.x(200000)).toBeCloseTo(100);
    expect(s.x(1)).toBeCloseTo(0); // clamped
    const xs = s.ticks.map((t) => s.x(t.v));
    expect([...xs].sort((a, b) => a - b)).toEqual(xs);
    expect(s.ticks.map((t) => t.v)).toEqual([20000, 50000, 100000, 200000]);
    expect(niceStep(0.03, 'floor')).toBeCloseTo(0.02);
    expect(niceStep(7, 'ceil')).toBe(10);
    expect(niceStep(100, 'floor')).toBe(100);
  });

  test('escapeXml', () => {
    expect(escapeXml(`<a href="x">'&'</a>`)).toBe('&lt;a href=&quot;x&quot;&gt;&apos;&amp;&apos;&lt;/a&gt;');
  });
});
