-- Kong's side of the external plugin protocol, on plain nginx + lua-nginx-module: what Kong's runloop does for a
-- plugin served by a plugin server (docs/kong.md, "The protocol"), so that fastguard's plugin servers are driven
-- by real nginx workers, LuaJIT cosockets and lua-MessagePack (the msgpack library Kong uses) under HTTP load.
--
-- Per nginx worker: StartInstance once per plugin entity (again when its config's __seq__ changes, or when the
-- server answers "no plugin instance"), HandleEvent in the access phase, then the Step loop: every PDK call the
-- plugin makes is answered from nginx's real request. As in Kong: a PDK function's first return value is the Step's
-- Data (nil: no Data key, so a failed call is a Step without Data), typed Step methods for maps and entities,
-- nothing after kong.response.exit / error, and an RPC error is logged while the request goes on (Kong proxies it:
-- fail open). A route's post-function (Kong's bundled post-function plugin: Lua run after every plugin) sees the
-- same `kong.ctx.shared` as the plugins, which is how fail-closed works (docs/kong.md).

local cjson = require "cjson.safe"
local mp = require "MessagePack"

local ngx = ngx
local M = {}

local plugins = {}        -- entity id -> {name, socket, config_json, seq}
local instances = {}      -- entity id -> {id, seq} (this worker's)
local msg_id = 0
local reset_per_plugin = true   -- Kong >= 3.9 forgets every instance of a plugin on "no plugin instance"

local STEP_BY_METHOD = {
  ["kong.client.get_credential"] = "plugin.StepCredential",
  ["kong.client.load_consumer"] = "plugin.StepConsumer",
  ["kong.client.get_consumer"] = "plugin.StepConsumer",
  ["kong.client.authenticate"] = "plugin.StepCredential",
  ["kong.router.get_route"] = "plugin.StepRoute",
  ["kong.router.get_service"] = "plugin.StepService",
  ["kong.request.get_query"] = "plugin.StepMultiMap",
  ["kong.request.get_headers"] = "plugin.StepMultiMap",
  ["kong.response.get_headers"] = "plugin.StepMultiMap",
}
local TERMINAL = {["kong.response.exit"] = true, ["kong.response.error"] = true}

-- An empty table packs as a map where a map is meant (lua-MessagePack packs {} as an array).
local function as_map(t)
  if next(t) == nil then
    return function(buffer) mp.packers["map"](buffer, {}, 0) end
  end
  return t
end
mp.packers["function"] = function(buffer, f) f(buffer) end

-- A multi-map (headers, query) as Kong sends it: every value a list of strings.
local function multimap(t)
  local out = {}
  for k, v in pairs(t or {}) do
    if type(v) == "table" then
      out[k] = v
    elseif v == true then
      out[k] = function(buffer) mp.packers["array"](buffer, {}, 0) end
    else
      out[k] = {tostring(v)}
    end
  end
  return as_map(out)
end

local function response_body(status, message)
  -- kong.response.error's JSON form (the one Accept: */* gets)
  return cjson.encode({message = message})
end

local function exit(status, body, headers)
  for k, v in pairs(headers or {}) do ngx.header[k] = v end
  ngx.status = status
  if type(body) == "table" then
    ngx.header["Content-Type"] = "application/json; charset=utf-8"
    ngx.print(cjson.encode(body))
  elseif body ~= nil then
    ngx.print(body)
  end
  return ngx.exit(status)
end

-- The PDK, answered from nginx's request. Only what plugins served here call; an unknown method answers nil.
local PDK = {
  ["kong.request.get_headers"] = function() return multimap(ngx.req.get_headers(100)) end,
  ["kong.request.get_header"] = function(name)
    local v = ngx.req.get_headers(100)[name]
    if type(v) == "table" then v = v[1] end
    return v
  end,
  ["kong.request.get_query"] = function() return multimap(ngx.req.get_uri_args(100)) end,
  ["kong.request.get_path"] = function() return ngx.var.uri end,
  ["kong.request.get_method"] = function() return ngx.req.get_method() end,
  -- Kong: get_ip is the peer's address, get_forwarded_ip the client's after trusted_ips (nginx's realip)
  ["kong.client.get_forwarded_ip"] = function() return ngx.var.remote_addr end,
  ["kong.client.get_ip"] = function() return ngx.var.realip_remote_addr end,
  ["kong.client.get_consumer"] = function() return ngx.ctx.authenticated_consumer end,
  ["kong.client.get_credential"] = function() return ngx.ctx.authenticated_credential end,
  ["kong.client.authenticate"] = function(consumer, credential)
    ngx.ctx.authenticated_consumer, ngx.ctx.authenticated_credential = consumer, credential
  end,
  ["kong.client.load_consumer"] = function() return nil end,  -- no database here
  ["kong.router.get_service"] = function() return ngx.ctx.fastguard_service end,
  ["kong.response.set_headers"] = function(headers)
    for k, v in pairs(headers or {}) do ngx.header[k] = v end
  end,
  ["kong.response.set_header"] = function(k, v) ngx.header[k] = v end,
  ["kong.service.request.set_headers"] = function(headers)
    for k, v in pairs(headers or {}) do ngx.req.set_header(k, v) end
  end,
  ["kong.service.request.set_header"] = function(k, v) ngx.req.set_header(k, v) end,
  ["kong.service.request.clear_header"] = function(k) ngx.req.clear_header(k) end,
  ["kong.ctx.shared.set"] = function(k, v) M.shared()[k] = v end,
  ["kong.ctx.shared.get"] = function(k) return M.shared()[k] end,
}

--- This request's kong.ctx.shared.
function M.shared()
  local shared = ngx.ctx.kong_shared
  if not shared then
    shared = {}
    ngx.ctx.kong_shared = shared
  end
  return shared
end

-- One RPC: [0, id, method, [arg]] on a pooled keepalive cosocket; the answer's result, or nil and the error.
local function call(socket_path, method, arg)
  msg_id = msg_id + 1
  local id = msg_id
  local sock = ngx.socket.tcp()
  sock:settimeout(10000)
  local ok, err = sock:connect("unix:" .. socket_path)
  if not ok then return nil, "connecting to " .. socket_path .. ": " .. tostring(err) end
  local sent, serr = sock:send(mp.pack({0, id, method, {arg}}))
  if not sent then
    sock:close()
    return nil, "sending: " .. tostring(serr)
  end
  local reader = mp.unpacker(function()
    local data = sock:receiveany(65536)
    return data
  end)
  while true do
    local got, message = reader()
    if not got then
      sock:close()
      return nil, "no answer from " .. socket_path
    end
    if message[1] == 1 then  -- [1, id, error, result]; [2, label, args] notifications are read past
      if message[2] ~= id then
        sock:close()
        return nil, "unexpected answer id"
      end
      sock:setkeepalive(60000, 64)
      if message[3] ~= nil then return nil, tostring(message[3]) end
      return message[4]
    end
  end
end

local function instance_id(entity)
  local p = plugins[entity]
  local inst = instances[entity]
  if inst and inst.seq == p.seq then return inst.id end
  -- p.config_json: the plugin's config as Kong serializes it, meta fields included (route_id, __plugin_id, __key__,
  -- __seq__...). Kept as JSON text: a Lua table would lose the difference between [] and {}, which Kong keeps.
  local result, err = call(p.socket, "plugin.StartInstance", {Name = p.name, Config = p.config_json})
  if not result then return nil, err end
  instances[entity] = {id = result.Id, seq = p.seq}
  if inst then
    -- Kong 3.10 (plugin_servers/plugin.lua): the instance of the old __seq__ is closed once the new one runs
    -- (an error is ignored: another worker may have closed it first)
    call(p.socket, "plugin.CloseInstance", inst.id)
  end
  return result.Id
end

local function reset(entity)
  if reset_per_plugin then  -- Kong >= 3.9: every instance of that plugin
    local name = plugins[entity].name
    for e, _ in pairs(instances) do
      if plugins[e] and plugins[e].name == name then instances[e] = nil end
    end
  else                       -- before 3.9: this entity's
    instances[entity] = nil
  end
end

-- The Step loop of one event; returns nil or an error (an RPC error: Kong logs it and the request goes on).
local function handle_event(entity, phase, retried)
  local p = plugins[entity]
  local iid, err = instance_id(entity)
  local step
  if iid then
    step, err = call(p.socket, "plugin.HandleEvent", {InstanceId = iid, EventName = phase})
  end
  if not step then
    if not retried and err and string.find(string.lower(err), "no plugin instance", 1, true) then
      reset(entity)
      return handle_event(entity, phase, true)
    end
    return err
  end
  local event = step.EventId
  while step.Data ~= "ret" do
    local method, args = step.Data.Method, step.Data.Args or {}
    if TERMINAL[method] then
      ngx.ctx.fastguard_approved = nil
      if method == "kong.response.error" then
        local headers = args[3] or {}
        headers["Content-Type"] = "application/json; charset=utf-8"
        return exit(args[1], response_body(args[1], args[2]), headers)
      end
      return exit(args[1], args[2], args[3])
    end
    local fn = PDK[method]
    local result = nil
    if fn then
      local ok, value = pcall(fn, unpack(args))
      if ok then result = value end
    end
    local answer = {EventId = event}
    if result ~= nil then answer.Data = result end
    step, err = call(p.socket, STEP_BY_METHOD[method] or "plugin.Step", answer)
    if not step then return err end
  end
  return nil
end

--- Configure this worker's plugins: {entity_id = {name=, socket=, config_json=, seq=}}, and whether
--- "no plugin instance" resets every instance of the plugin (Kong >= 3.9) or the entity's only.
function M.configure(entities, opts)
  plugins = entities
  reset_per_plugin = not (opts and opts.reset_per_entity)
end

--- Configure from a JSON file, and again whenever it changes (read every 0.2 s): Kong rebuilds its plugins in
--- place on a configuration change, in the same workers, rather than restarting them.
function M.watch(path, opts)
  local cjson = require "cjson"
  local seen
  local function load(premature)
    if premature then return end
    local file = io.open(path)
    if not file then return end
    local text = file:read("*a")
    file:close()
    if text ~= seen then
      local first = seen == nil
      seen = text
      M.configure(cjson.decode(text), opts)
      if not first then ngx.log(ngx.WARN, "fastguard gateway: plugins reconfigured") end
    end
  end
  load()
  assert(ngx.timer.every(0.2, load))
end

-- What a post-function's code sees as `kong` (the part of the PDK such code uses).
local kong_shim = setmetatable({
  response = {exit = function(status, body, headers) return exit(status, body, headers) end},
  log = {err = function(...) ngx.log(ngx.ERR, ...) end},
}, {__index = function(_, k) if k == "ctx" then return {shared = M.shared()} end end})

--- The access phase of a location: run its plugins in order, as Kong does, then its post-function code if any.
function M.access(entities, post_function)
  for _, entity in ipairs(entities) do
    local err = handle_event(entity, "access", false)
    if err then
      ngx.log(ngx.ERR, "fastguard gateway: plugin ", plugins[entity].name, ": ", err)
    end
  end
  if post_function then
    local chunk = assert(loadstring(post_function))
    setfenv(chunk, setmetatable({kong = kong_shim}, {__index = _G}))
    chunk()
  end
end

return M
